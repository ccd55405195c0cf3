# MeLi 2019 product-title classification: MLP and CNN over word embeddings, against a TF-IDF
# baseline, one job per hyperparameter combination, compared in results/report.html.
#
#   snakemake --cores 2                                   # offline demo (config/config.yaml)
#   snakemake --profile profiles/slurm                    # the full dataset on a SLURM cluster
#   snakemake -n --configfile config/meli2019.yaml        # dry run of the full grid

# A --configfile given on the command line replaces the default instead of being deep-merged
# into it (otherwise the demo's grid values and embeddings would leak into the full run).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/embeddings.smk"
include: "rules/train.smk"
include: "rules/baseline.smk"
include: "rules/tracking.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        "results/report.html",
        "results/mlflow/imported.json",
        "results/mlflow/selected.json",
