"""Evaluation: per-case metrics and the tables built from them."""
