"""The one exception family: every error modalfuse raises on purpose is a `ModalfuseError`.

A `ModalfuseError` means "the input, the data or the setup is wrong, and the message says how
to fix it": the CLI prints it and exits 1, the API turns the request-facing ones into a 4xx.
Any other exception is a bug. The subclasses keep the built-in base they always had
(`ValueError`, `RuntimeError`, ...), so code that caught those still works.
"""

from __future__ import annotations


class ModalfuseError(Exception):
    """Base of every deliberate modalfuse error: the message is for the user."""


class InvalidInput(ModalfuseError, ValueError):
    """A value a user gave (an option, a record, a file, a setting) is not allowed."""


class DataError(ModalfuseError, RuntimeError):
    """A dataset, a split or a source is missing, stale or inconsistent."""


class ModelError(ModalfuseError, RuntimeError):
    """A model, a bundle or a registered version cannot be used as asked."""


class RegistryError(ModelError):
    """The registry cannot do what was asked (missing model/alias, unreachable store, a
    promotion gate setting it refuses)."""


class NotFitted(ModalfuseError, RuntimeError):
    """A fitted step (preprocessor, selector, model) was used before `fit`."""


class MissingData(DataError, FileNotFoundError):
    """A file or folder a stage needs (a dataset, its splits, a source) does not exist yet."""
