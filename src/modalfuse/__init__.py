"""modalfuse: classification from images plus tabular data, from dataset to deployed API."""

__version__ = "0.1.0"
