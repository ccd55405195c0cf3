"""Data stage (rules/data.smk): the demo dataset, downloads, readers, title cleaning, the split."""
