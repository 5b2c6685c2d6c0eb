"""Tokenizers, datasets and input pipelines."""
