"""Command line of the experiments: ``bsrnn reproduce``."""

from .reproduce import register

__all__ = ["register"]
