"""runner: a declarative, incremental render runner for AI film."""

__version__ = "0.1.0"
