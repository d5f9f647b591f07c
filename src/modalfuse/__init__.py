"""modalfuse: classification from images plus tabular data, from dataset to deployed API."""

__version__ = "0.2.0"
