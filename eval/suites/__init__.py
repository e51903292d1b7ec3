"""Evaluation suites, one module per protocol, registered by name in ``unitok.registry.SUITES``."""
