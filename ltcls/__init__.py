"""ltcls: long-tailed visual recognition toolkit."""

__version__ = "0.1.0"
