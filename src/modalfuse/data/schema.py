"""Dataset validation with pandera, generated from the DatasetSpec; run at build and at load.

A failure raises DatasetValidationError naming each rule and the ids of the rows that
broke it, so a bad build is fixed at the source rather than debugged downstream.
pandera (the `train` extra) is imported by the functions that use it, so importing this
module, and `data.dataset` above it, stays cheap on the serving install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from modalfuse.errors import DataError
from modalfuse.features.image import ImageError, normalize_image
from modalfuse.spec import DatasetSpec, FieldKind

if TYPE_CHECKING:
    import pandera.pandas as pa


class DatasetValidationError(DataError, ValueError):
    """The dataset breaks its schema; the message lists rules and offending rows."""


def _multi_check(allowed: list[str]) -> pa.Check:
    import pandera.pandas as pa

    allowed_set = set(allowed)

    def ok(s: pd.Series) -> pd.Series:
        return s.map(lambda v: v == "" or set(str(v).split("|")) <= allowed_set)

    return pa.Check(ok, element_wise=False, name=f"labels in {sorted(allowed_set)}")


def table_schema(spec: DatasetSpec) -> pa.DataFrameSchema:
    """The pandera schema a dataset table must meet: the spec's columns, types, ranges and vocabularies."""
    import pandera.pandas as pa

    cols: dict[str, pa.Column] = {
        spec.id_column: pa.Column(unique=True, nullable=False),
        spec.target: pa.Column(str, nullable=False, checks=pa.Check.str_length(min_value=1)),
        spec.group_column: pa.Column(nullable=False),
        spec.image_column: pa.Column(str, nullable=False, unique=True),
    }
    for f in spec.fields:
        checks: list[pa.Check] = []
        if f.kind == FieldKind.numeric:
            if f.min is not None:
                checks.append(pa.Check.ge(f.min))
            if f.max is not None:
                checks.append(pa.Check.le(f.max))
            cols[f.name] = pa.Column(float, checks=checks, nullable=not f.required, coerce=True)
        elif f.kind == FieldKind.categorical:
            if f.categories:
                checks.append(pa.Check.isin(f.categories))
            cols[f.name] = pa.Column(str, checks=checks, nullable=not f.required)
        elif f.kind == FieldKind.multi:
            if f.categories:
                checks.append(_multi_check(f.categories))
            cols[f.name] = pa.Column(str, checks=checks, nullable=True)
        else:
            cols[f.name] = pa.Column(bool, nullable=not f.required)
    return pa.DataFrameSchema(cols, strict=False, name=f"{spec.name} table")


def validate_table(spec: DatasetSpec, table: pd.DataFrame) -> pd.DataFrame:
    """The table, coerced by its schema; DatasetValidationError lists every broken rule."""
    import pandera.pandas as pa

    try:
        return table_schema(spec).validate(table, lazy=True)
    except pa.errors.SchemaErrors as e:
        fc = e.failure_cases
        lines = []
        for (column, check), group in fc.groupby(["column", "check"], dropna=False):
            idx = [int(i) for i in group["index"].dropna()][:10]
            ids = table.loc[idx, spec.id_column].tolist() if idx and spec.id_column in table else []
            bad = group["failure_case"].astype(str).tolist()[:5]
            lines.append(f"- column {column!r}, rule {check}: rows with {spec.id_column} {ids} "
                         f"(values {bad})")
        raise DatasetValidationError(
            f"dataset {spec.name!r} fails {len(lines)} rule(s):\n" + "\n".join(lines)
        ) from None


def validate_images(spec: DatasetSpec, table: pd.DataFrame, images: dict[str, bytes]) -> None:
    """Check that every row's image is present and decodes; DatasetValidationError lists those that fail."""
    problems = []
    for rid, name in zip(table[spec.id_column], table[spec.image_column], strict=True):
        data = images.get(name)
        if data is None:
            problems.append(f"- {spec.id_column} {rid}: image {name!r} is missing")
            continue
        try:
            normalize_image(data, spec.image_size, 10_000_000)
        except ImageError as err:
            problems.append(f"- {spec.id_column} {rid}: image {name!r} is not usable: {err}")
    if problems:
        raise DatasetValidationError(
            f"dataset {spec.name!r}: {len(problems)} row(s) fail the rule 'every image present "
            "and decodable':\n" + "\n".join(problems[:50])
        )
