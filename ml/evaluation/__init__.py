"""Metrics for generated ASTs: validity, alpha-normalized exact match, tree similarity."""
