"""Tokenizers, datasets and input pipelines, and the task generators (the arithmetic task, RL problem sources)."""
