"""Embedding stage (rules/embeddings.smk): vocabulary + token ids (features), embedding matrices (matrix)."""
