"""Reuse: fine-tune (finetune.py) and distill (distill.py) published models with a shared
training loop (training.py), cut feature extractors out of them (features.py), and compose
crates into pipelines and ensembles (compose.py)."""
