# Reporting: comparison tables, selection on validation only, test scores of the selected
# models only, and one self-contained results/report.html.

localrules:
    aggregate,
    report_html,


rule aggregate:
    """runs.csv/.md (one row per combination), per-family best on validation, hyperparameter effects."""
    input:
        metrics=run_metrics(),
        # checked against their metrics.json (a history cut mid-row is a damaged record)
        histories=run_histories(),
        # halving: the search summaries name the final and pruned runs
        search=search_summaries(),
    output:
        runs=report("results/tables/runs.csv", category="Tables", caption="../report/runs.rst"),
        runs_md="results/tables/runs.md",
        effects="results/tables/effects.csv",
        selection="results/tables/selection.json",
        statistics="results/tables/statistics.json",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    params:
        runs=lambda wc, input: all_run_dirs(input.search),
        partial=PARTIAL_STAMP,  # partial tables written since the last run: rebuild them
    resources:
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.report.aggregate --out-dir results/tables {params.runs} > {log:q} 2>&1"


rule ensembles:
    """Ensembles of finished runs (a family's seeds, its top-k, the families' best), compared on validation only."""
    input:
        selection="results/tables/selection.json",
        runs="results/tables/runs.csv",
        validation=f"{DATA}/validation.parquet",
        ids=f"{FEATURES}/validation_ids.npy",
        y=f"{FEATURES}/validation_labels.npy",
        labels=f"{FEATURES}/labels.json",
        tfidf=[f"{TFIDF}/validation.npz", f"{TFIDF}/vectorizer.joblib"] if TFIDF_USED else [],
        models=run_models(),
        search=search_summaries(),
    output:
        chosen="results/tables/ensembles.json",
        folders=directory("results/ensembles"),
    log:
        "results/logs/ensembles.log",
    benchmark:
        "results/benchmarks/ensembles.tsv"
    params:
        cfg=as_arg(config["report"]["ensemble"]),
        device=config["train"]["device"],
        data_dir=lambda wc, input: os.path.dirname(input.validation),
        features=lambda wc, input: os.path.dirname(input.labels),
    threads: lambda wc: family_resources("mlp")["threads"]
    resources:
        mem_mb=lambda wc, attempt: family_resources("mlp")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: family_resources("mlp")["runtime"] * attempt,
        gpu=lambda wc: family_resources("mlp")["gpu"],
    conda:
        CONDA_ENV
    shell:
        "python -m meli.ensemble --selection {input.selection:q} --runs {input.runs:q} --data-dir {params.data_dir}"
        " --features {params.features} --config {params.cfg} --device {params.device}"
        " --out-dir {output.folders:q} --out {output.chosen:q} > {log:q} 2>&1"


rule evaluate_test:
    """Test scores (bacc with bootstrap CI, F1, per-category recall) of the selected models only."""
    input:
        selection="results/tables/selection.json",
        test=f"{DATA}/test.parquet",
        ids=f"{FEATURES}/test_ids.npy",
        y=f"{FEATURES}/test_labels.npy",
        labels=f"{FEATURES}/labels.json",
        tfidf=tfidf_test_inputs(),
        models=run_models(),
        search=search_summaries(),
        ensembles="results/tables/ensembles.json",
    output:
        test=report("results/tables/test.csv", category="Tables", caption="../report/test.rst"),
        details="results/tables/test_details.json",
    log:
        "results/logs/evaluate_test.log",
    benchmark:
        "results/benchmarks/evaluate_test.tsv"
    params:
        cfg=as_arg(config["report"]),
        device=config["train"]["device"],
        data_dir=lambda wc, input: os.path.dirname(input.test),
        features=lambda wc, input: os.path.dirname(input.labels),
    threads: lambda wc: family_resources("mlp")["threads"]
    resources:
        mem_mb=lambda wc, attempt: family_resources("mlp")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: family_resources("mlp")["runtime"] * attempt,
        gpu=lambda wc: family_resources("mlp")["gpu"],
    conda:
        CONDA_ENV
    shell:
        "python -m meli.report.evaluate --selection {input.selection:q} --data-dir {params.data_dir}"
        " --features {params.features} --config {params.cfg} --device {params.device}"
        " --ensembles {input.ensembles:q} --out-dir results/tables > {log:q} 2>&1"


rule report_html:
    """One self-contained HTML file (inline CSS and SVG), readable offline after scp."""
    input:
        summary=f"{DATA}/summary.json",
        features=f"{FEATURES}/stats.json",
        coverage=expand("results/embeddings/{emb}/coverage.json", emb=EMBEDDINGS_USED),
        runs="results/tables/runs.csv",
        effects="results/tables/effects.csv",
        selection="results/tables/selection.json",
        statistics="results/tables/statistics.json",
        ensembles="results/tables/ensembles.json",
        test="results/tables/test.csv",
        details="results/tables/test_details.json",
        histories=run_histories(),
        search=search_summaries(),
    output:
        report("results/report.html", category="Report", caption="../report/report.rst"),
    log:
        "results/logs/report_html.log",
    benchmark:
        "results/benchmarks/report_html.tsv"
    params:
        cfg=lambda wc: as_arg(config),  # a function: paths with { } in the config are no wildcards
        configfiles=lambda wc: " ".join(shlex.quote(str(f)) for f in workflow.configfiles),
    resources:
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.report.render --results results --config {params.cfg}"
        " --configfiles {params.configfiles} --out {output:q} > {log:q} 2>&1"
