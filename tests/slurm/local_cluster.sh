#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the integration test and for trying
# `snakemake --profile profiles/slurm` without an HPC account. Debian 12 (slurm-wlm 22.05), root.
#
#   tests/slurm/local_cluster.sh start    install packages if missing, write configs, start the
#                                         daemons, wait until the node is idle (idempotent)
#   tests/slurm/local_cluster.sh stop     stop only the daemons this script started (PID files),
#                                         remove the /etc/slurm/slurm.conf link it created
#   tests/slurm/local_cluster.sh status   daemons and sinfo; exit 0 only if the cluster is up
#
# Environment:
#   MELI_SLURM_LAB=/tmp/meli-slurm-lab   config, state, logs, PID files and the accounting database
#   MELI_SLURM_PARTITION=local           the single partition (tests/slurm/profile uses it)
#   MELI_SLURM_GPUS=2                    fake gres/gpu devices so that `gpu: 1` jobs schedule
#                                        (character devices like /dev/null: no GPU behind them)
#
# Why each piece is here:
# - slurmdbd + MariaDB: the executor plugin's default status command is `sacct`; without
#   accounting storage it never sees a job finish and the workflow waits forever.
# - /etc/slurm/slurm.conf -> $LAB/etc/slurm.conf: the `srun` the plugin starts inside each job
#   runs with SLURM_* variables stripped, so SLURM_CONF alone is not enough there.
# - No systemd and no cgroups (containers): proctrack/linuxproc, task/none; memory limits are
#   enforced by jobacct_gather polling every second (OverMemoryKill), so a job over its --mem is
#   killed as OUT_OF_MEMORY like on a real cluster and Snakemake retries it with more memory.
set -euo pipefail

LAB="${MELI_SLURM_LAB:-/tmp/meli-slurm-lab}"
PARTITION="${MELI_SLURM_PARTITION:-local}"
GPUS="${MELI_SLURM_GPUS:-2}"
ETC="$LAB/etc" RUN="$LAB/run" LOGS="$LAB/log"
SYSTEM_CONF=/etc/slurm/slurm.conf
DB_PORT=3317 DBD_PORT=6829 CTLD_PORT=6827 SLURMD_PORT=6828
export SLURM_CONF="$ETC/slurm.conf"
NODE="$(hostname -s 2>/dev/null || hostname)"

say() { printf '[local_cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { say "error: $*"; exit 1; }

# ---- processes: tracked by PID file and executable, never looked up by name ------------------

running() { # running PIDFILE PROGRAM: the PID file's process is alive and is PROGRAM
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -cd 0-9 <"$1")
  [ -n "$pid" ] && [ -e "/proc/$pid" ] || return 1
  # Debian's /usr/sbin/slurmd is a symlink to slurmd-wlm: compare resolved paths (guards PID reuse)
  [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$(command -v "$2")")" ]
}

terminate() { # terminate PIDFILE PROGRAM
  local pid i
  if running "$1" "$2"; then
    pid=$(tr -cd 0-9 <"$1")
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    if [ -e "/proc/$pid" ]; then say "$2 ignored SIGTERM for 10 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$1"
}

await() { # await SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no $what after ${deadline}s; logs in $LOGS"
    sleep 0.2
  done
}

# ---- packages ---------------------------------------------------------------------------------

install_packages() {
  local cmd missing=0
  for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd mariadb-install-db mariadb; do
    command -v "$cmd" >/dev/null || missing=1
  done
  [ "$missing" = 0 ] && return 0
  command -v apt-get >/dev/null || fail "SLURM is not installed and there is no apt-get"
  say "installing slurmctld slurmd slurmdbd slurm-client munge mariadb (log: $LOGS/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  # update only when the package lists do not know slurm yet (a fresh image has empty lists)
  apt-cache show slurmctld >/dev/null 2>&1 || apt-get update -q >"$LOGS/apt.log" 2>&1
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurmdbd slurm-client munge \
    mariadb-server-core mariadb-client-core >>"$LOGS/apt.log" 2>&1 ||
    { tail -n 20 "$LOGS/apt.log" >&2; fail "apt-get install failed"; }
}

# ---- configuration ----------------------------------------------------------------------------

node_definition() {
  # topology as slurmd detects it; RealMemory 5% (at least 512 MB) below the machine's
  local detected mem
  detected=$(slurmd -C | head -n 1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
  mem=$((mem - (mem / 20 > 512 ? mem / 20 : 512)))
  printf 'NodeName=%s NodeAddr=127.0.0.1 %s RealMemory=%s' "$NODE" \
    "$(grep -o 'CPUs=.*ThreadsPerCore=[0-9]*' <<<"$detected")" "$mem"
  if [ "$GPUS" -gt 0 ]; then printf ' Gres=gpu:%s' "$GPUS"; fi
  printf ' State=UNKNOWN\n'
}

slurm_conf() {
  cat <<EOF
# Written by tests/slurm/local_cluster.sh: one node, no systemd, no cgroups.
ClusterName=meli-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$LAB/state
SlurmdSpoolDir=$LAB/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job that gives no --mem gets the node's whole memory
DefMemPerCPU=1000
# memory enforcement without cgroups: poll every second, kill steps over their limit
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the plugin puts rule and wildcards in --comment: keep it for sacct
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
# finished jobs stay visible to squeue for 5 min, should someone use --slurm-status-command squeue
MinJobAge=300
ReturnToService=2
SlurmdTimeout=60
EOF
  if [ "$GPUS" -gt 0 ]; then
    printf 'GresTypes=gpu\nAccountingStorageTRES=gres/gpu\n'
  fi
  node_definition
  echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

slurmdbd_conf() {
  cat <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
}

replace_if_changed() { # replace_if_changed FILE < content; returns 0 if FILE changed
  local new
  new=$(cat)
  [ -f "$1" ] && [ "$new" = "$(cat "$1")" ] && return 1
  printf '%s\n' "$new" >"$1"
  return 0
}

write_configs() { # sets RESTART=1 when slurmctld/slurmd must reread their configuration
  RESTART=0
  slurm_conf | replace_if_changed "$ETC/slurm.conf" && RESTART=1
  if [ "$GPUS" -gt 0 ]; then
    mkdir -p "$LAB/fake-gpu"
    local i
    # slurm 22.05 ignores a gres without File= and wants device files: same numbers as /dev/null
    for ((i = 0; i < GPUS; i++)); do
      [ -c "$LAB/fake-gpu/gpu$i" ] || mknod -m 666 "$LAB/fake-gpu/gpu$i" c 1 3
    done
    echo "NodeName=$NODE Name=gpu File=$LAB/fake-gpu/gpu[0-$((GPUS - 1))]" |
      replace_if_changed "$ETC/gres.conf" && RESTART=1
  elif [ -f "$ETC/gres.conf" ]; then
    rm -f "$ETC/gres.conf"
    RESTART=1
  fi
  slurmdbd_conf | replace_if_changed "$ETC/slurmdbd.conf" || true
  chmod 600 "$ETC/slurmdbd.conf"
  link_system_conf
}

link_system_conf() {
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$ETC/slurm.conf" ]; then return 0; fi
  [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ] &&
    fail "$SYSTEM_CONF exists and is not ours; this machine has its own SLURM configuration"
  [ -d /etc/slurm ] || { mkdir -p /etc/slurm && touch "$RUN/created-etc-slurm"; }
  ln -s "$ETC/slurm.conf" "$SYSTEM_CONF"
}

unlink_system_conf() {
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$ETC/slurm.conf" ]; then
    rm -f "$SYSTEM_CONF"
    if [ -f "$RUN/created-etc-slurm" ]; then rmdir /etc/slurm 2>/dev/null || true; fi
  fi
  rm -f "$RUN/created-etc-slurm"
}

# ---- daemons ----------------------------------------------------------------------------------

munge_works() { munge -n </dev/null | unmunge >/dev/null; }

start_munge() {
  running "$RUN/munged.pid" munged && return 0
  if munge_works 2>/dev/null; then
    say "a munged we did not start is running: using it (stop will leave it alone)"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 "$RUN/munge" "$LOGS/munge"
  say "starting munged"
  runuser -u munge -- munged --pid-file="$RUN/munge/munged.pid" --log-file="$LOGS/munge/munged.log"
  await 20 munged munge_works
  ln -sfn "$RUN/munge/munged.pid" "$RUN/munged.pid"
}

db() { mariadb --socket="$RUN/mysqld.sock" "$@"; }

start_accounting() {
  if ! running "$RUN/mysqld.pid" mariadbd; then
    if [ ! -d "$LAB/mysql/mysql" ]; then
      say "creating the accounting database in $LAB/mysql"
      mariadb-install-db --user=root --datadir="$LAB/mysql" --auth-root-authentication-method=socket \
        --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 ||
        { tail -n 20 "$LOGS/mariadb-install.log" >&2; fail "mariadb-install-db failed"; }
    fi
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid mariadbd --user=root --datadir="$LAB/mysql" --socket="$RUN/mysqld.sock" \
      --pid-file="$RUN/mysqld.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
      --log-error="$LOGS/mariadbd.err" --innodb-buffer-pool-size=32M --skip-name-resolve \
      </dev/null >/dev/null 2>&1 &
    await 60 mariadbd db -e 'select 1'
    await 10 "mariadbd PID file" test -s "$RUN/mysqld.pid"
  fi
  db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
         CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  if ! running "$RUN/slurmdbd.pid" slurmdbd; then
    say "starting slurmdbd"
    SLURM_CONF="$ETC/slurm.conf" slurmdbd
    await 60 slurmdbd bash -c "</dev/tcp/127.0.0.1/$DBD_PORT"
  fi
}

start_slurm() {
  if [ "$RESTART" = 1 ] && { running "$RUN/slurmctld.pid" slurmctld || running "$RUN/slurmd.pid" slurmd; }; then
    say "configuration changed: restarting slurmctld and slurmd"
    stop_slurm
  fi
  running "$RUN/slurmctld.pid" slurmctld || { say "starting slurmctld"; slurmctld; }
  await 60 slurmctld bash -c 'scontrol ping | grep -q UP'
  running "$RUN/slurmd.pid" slurmd || { say "starting slurmd"; slurmd -N "$NODE"; }
  local deadline=$((SECONDS + 60)) state resumed=0
  while :; do
    state=$(sinfo --noheader --Node --nodes="$NODE" --format=%t 2>/dev/null || true)
    case "$state" in
      idle | mix | alloc) say "node $NODE is $state (partition $PARTITION)"; return 0 ;;
      *drain* | *down* | *fail*)
        # e.g. left drained by an earlier run that died: resume once
        [ "$resumed" = 1 ] || { scontrol update nodename="$NODE" state=resume || true; resumed=1; } ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
      scontrol show node "$NODE" >&2 || true
      fail "node $NODE is '$state', not idle; see $LOGS/slurmd.log and $LOGS/slurmctld.log"
    fi
    sleep 0.2
  done
}

stop_slurm() {
  if running "$RUN/slurmctld.pid" slurmctld; then
    local jobs
    jobs=$(squeue --noheader --format=%i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      say "cancelling jobs still queued: $(echo $jobs)"
      # shellcheck disable=SC2086  # one argument per job id
      scancel $jobs 2>/dev/null || true
      sleep 1
    fi
  fi
  terminate "$RUN/slurmd.pid" slurmd
  terminate "$RUN/slurmctld.pid" slurmctld
}

# ---- commands ---------------------------------------------------------------------------------

cmd_start() {
  mkdir -p "$ETC" "$RUN" "$LOGS" "$LAB/state" "$LAB/spool"
  install_packages
  write_configs
  start_munge
  start_accounting
  start_slurm
}

cmd_stop() {
  stop_slurm
  terminate "$RUN/slurmdbd.pid" slurmdbd
  terminate "$RUN/mysqld.pid" mariadbd
  if [ -L "$RUN/munged.pid" ]; then terminate "$RUN/munge/munged.pid" munged; rm -f "$RUN/munged.pid"; fi
  unlink_system_conf
  say "stopped"
}

cmd_status() {
  local up=0 entry
  for entry in munged:munge/munged.pid mariadbd:mysqld.pid slurmdbd:slurmdbd.pid \
    slurmctld:slurmctld.pid slurmd:slurmd.pid; do
    if running "$RUN/${entry#*:}" "${entry%%:*}"; then
      echo "${entry%%:*}: running (pid $(cat "$RUN/${entry#*:}"))"
    else
      echo "${entry%%:*}: not started by this script"
      [ "${entry%%:*}" = munged ] || up=1
    fi
  done
  [ "$up" = 0 ] && sinfo
  return "$up"
}

[ "$(id -u)" = 0 ] || fail "must run as root (installs packages, starts daemons)"
case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
