"""Training stage: one run per combination (neural: rules/train.smk; baseline: rules/baseline.smk)."""
