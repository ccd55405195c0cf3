"""MeLi 2019 title classification: data, embeddings, models, training, reporting."""
