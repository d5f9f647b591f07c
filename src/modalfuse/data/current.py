"""Which dataset a command works on when `-d` is not given.

In order: `MODALFUSE_DATASET`, then the dataset `modalfuse data use NAME` recorded, then the only
dataset in the data folder. With several datasets and no choice made, the command stops and
lists them, rather than guessing. Nothing here names the built-in dataset: a user who never
built it never reads its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from modalfuse.config import Settings
from modalfuse.errors import InvalidInput, MissingData


@dataclass(frozen=True)
class DatasetChoice:
    """The dataset a command uses, and why it was that one (printed by the CLI)."""

    name: str
    reason: str


def available_datasets(settings: Settings) -> list[str]:
    """The built or imported datasets under the data folder (folders holding a spec.json)."""
    root = settings.datasets_dir
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "spec.json").is_file())


def choose_dataset(settings: Settings, explicit: str | None = None) -> DatasetChoice:
    """The dataset a command should use (see the module docstring for the order).

    Raises MissingData when the data folder holds no dataset, InvalidInput when it holds
    several and nothing says which."""
    if explicit:
        return DatasetChoice(explicit, "-d")
    if settings.dataset:
        return DatasetChoice(settings.dataset, "MODALFUSE_DATASET")
    marker = settings.current_dataset_file
    if marker.is_file() and (name := marker.read_text().strip()):
        return DatasetChoice(name, f"set by `modalfuse data use {name}`")
    names = available_datasets(settings)
    if len(names) == 1:
        return DatasetChoice(names[0], f"the only dataset in {settings.datasets_dir}")
    if not names:
        raise MissingData(
            f"no dataset in {settings.datasets_dir}: import yours with `modalfuse data import` "
            "(docs/own-data.md) or build the built-in one with `modalfuse data build`")
    raise InvalidInput(
        f"{len(names)} datasets in {settings.datasets_dir} ({', '.join(names)}) and none chosen: "
        "pass -d NAME, set MODALFUSE_DATASET, or run `modalfuse data use NAME` once")


def use_dataset(settings: Settings, name: str) -> None:
    """Record `name` as the dataset commands use by default (it must exist)."""
    names = available_datasets(settings)
    if name not in names:
        raise MissingData(f"no dataset {name!r} in {settings.datasets_dir}; "
                          f"there are: {', '.join(names) or 'none'}")
    settings.current_dataset_file.parent.mkdir(parents=True, exist_ok=True)
    settings.current_dataset_file.write_text(name + "\n")


__all__ = ["DatasetChoice", "available_datasets", "choose_dataset", "use_dataset"]
