"""Metrics used by the evaluation suites (and by the pre-training demo)."""
