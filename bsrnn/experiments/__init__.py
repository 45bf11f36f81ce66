"""Experiments that reproduce the paper's tables and figures at CPU scale."""
