#!/usr/bin/env bash
# System packages some tests need (Debian): Chromium for the report's browser check.
# Best effort: without root or apt, the tests that need them skip with a reason.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: not root or no apt-get; tests needing ${need[*]} will skip" >&2
  exit 0
fi
echo "install_system_deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "install_system_deps: apt-get install ${need[*]} failed; those tests will skip" >&2
exit 0
