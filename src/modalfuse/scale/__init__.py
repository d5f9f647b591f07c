"""Batch scoring beyond one machine: the Ray Data engine and its benchmark."""
