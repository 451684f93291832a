"""vfcore's version, part of every result-cache key: results of another version are recomputed."""

__version__ = "0.2.0"
