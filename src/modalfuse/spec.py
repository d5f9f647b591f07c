"""DatasetSpec: the columns of a dataset, what each field may hold, and where its images are.

The spec is data, not code: every layer reads it, and nothing about Pokémon lives here.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator


class FieldKind(str, Enum):
    """How a field's raw value is read and encoded: a number, one category, several labels or a flag."""

    numeric = "numeric"
    categorical = "categorical"
    multi = "multi"  # several labels in one cell, joined by "|" (egg groups, abilities)
    boolean = "boolean"


class FieldSpec(BaseModel):
    """One input column of the table and what values it may take."""

    name: str
    kind: FieldKind
    required: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None  # allowed values for categorical/multi; None: open set
    description: str = ""
    example: float | str | bool | None = None


def plural(noun: str) -> str:
    """The English plural of a noun of `DatasetWords` ("image" -> "images", "species" and
    other nouns ending in s stay as they are, "entry" -> "entries")."""
    if noun.endswith("s"):
        return noun
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


class DatasetWords(BaseModel):
    """What the pages and messages call this dataset's things: one image, one record (the
    table fields of a row), one row and one group of the split. Neutral unless the dataset's
    builder (or an imported spec) says otherwise; the class is the target column's name."""

    image_noun: str = "image"
    record_noun: str = "record"
    row_noun: str = "row"
    group_noun: str = "group"

    @property
    def images(self) -> str:
        """The plural of `image_noun`."""
        return plural(self.image_noun)

    @property
    def rows(self) -> str:
        """The plural of `row_noun`."""
        return plural(self.row_noun)

    @property
    def grouped(self) -> str:
        """How the page calls folds cut along the groups: "family-grouped", or "grouped"."""
        return "grouped" if self.group_noun == "group" else f"{self.group_noun}-grouped"


class DatasetSpec(BaseModel):
    """Everything the pipeline needs to know about a dataset; nothing about Pokémon.

    The table lives at `table` (Parquet) next to the spec, the image of a row at
    `images/<image column value>` relative to the dataset folder.
    """

    name: str
    table: str = "table.parquet"
    id_column: str
    target: str
    image_column: str
    group_column: str
    fields: list[FieldSpec]
    views_table: str | None = None  # optional extra views: id, view, frame, path
    image_size: int = Field(default=96, ge=16, le=512)
    # Classes with fewer rows than this cannot be learned nor scored honestly:
    # they are kept in the table but left out of modelling (split "excluded").
    min_class_count: int = Field(default=2, ge=1)
    display_column: str | None = None  # a human name for a row, if any
    # Text that means "missing" in this dataset's CSV files besides an empty cell (what
    # `data import --na-value` said): scoring a CSV reads them the way the import did.
    na_values: list[str] = Field(default_factory=list)
    # Images named after columns (`data import --image-pattern`, e.g. "{id}"): batch scoring finds
    # a row's image the same way when its table has no image column.
    image_pattern: str | None = None
    slice_field: str | None = None  # a field whose values the model card reports metrics per
    description: str = ""
    words: DatasetWords = Field(default_factory=DatasetWords)  # see DatasetWords

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, v: list[FieldSpec]) -> list[FieldSpec]:
        names = [f.name for f in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"field names must be unique; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _columns_distinct(self) -> DatasetSpec:
        reserved = {self.id_column, self.target, self.image_column, self.group_column}
        clash = sorted(reserved & {f.name for f in self.fields})
        if clash:
            raise ValueError(
                f"input fields may not reuse the id/target/image/group columns: {clash}"
            )
        return self

    def field(self, name: str) -> FieldSpec:
        """The spec of the input field `name` (KeyError listing the fields if there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"unknown field {name!r}; fields are {[f.name for f in self.fields]}")

    def fields_of(self, kind: FieldKind) -> list[FieldSpec]:
        """The input fields of one kind, in spec order."""
        return [f for f in self.fields if f.kind == kind]

    def save(self, path: Path) -> None:
        """Write the spec as JSON (the dataset's and the bundle's `spec.json`)."""
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> DatasetSpec:
        """The spec saved at `path`, validated."""
        return cls.model_validate(json.loads(path.read_text()))
