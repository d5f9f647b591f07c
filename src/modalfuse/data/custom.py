"""Bring your own dataset: a CSV/Parquet table with an image-file column -> a modalfuse dataset.

Field kinds are inferred (numbers -> numeric, true/false -> boolean, text with '|' ->
multi-valued, other text -> categorical) unless a spec JSON is given; the result is the
same folder layout as the built-in dataset, so every later stage works unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from modalfuse.config import DatasetSpec, FieldKind, FieldSpec
from modalfuse.data.dataset import write_dataset


def read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"table {path} must be .csv or .parquet, got {path.suffix!r}")


def infer_fields(table: pd.DataFrame, exclude: set[str], max_categories: int = 50) -> list[FieldSpec]:
    fields = []
    for col in table.columns:
        if col in exclude:
            continue
        s = table[col].dropna()
        lowered = s.astype(str).str.lower()
        if pd.api.types.is_bool_dtype(table[col]) or (len(s) and lowered.isin(["true", "false"]).all()):
            fields.append(FieldSpec(name=col, kind=FieldKind.boolean))
        elif pd.api.types.is_numeric_dtype(table[col]):
            fields.append(FieldSpec(name=col, kind=FieldKind.numeric, required=bool(s.size == len(table))))
        elif s.astype(str).str.contains("|", regex=False).any():
            fields.append(FieldSpec(name=col, kind=FieldKind.multi))
        else:
            cats = sorted(s.astype(str).unique())
            fields.append(FieldSpec(name=col, kind=FieldKind.categorical,
                                    categories=cats if len(cats) <= max_categories else None))
    return fields


def build_custom(table_path: Path, images_dir: Path, out_dir: Path, name: str, target: str,
                 image_column: str, id_column: str, group_column: str | None = None,
                 spec_path: Path | None = None, image_size: int = 96,
                 min_class_count: int = 2) -> Path:
    table = read_table(table_path)
    for col in (target, image_column, id_column):
        if col not in table.columns:
            raise ValueError(f"column {col!r} not in {table_path}; columns: {list(table.columns)}")
    if group_column is None:
        group_column = "_group"
        table[group_column] = table[id_column]  # no groups given: each row is its own group
    if spec_path:
        spec = DatasetSpec.load(spec_path)
    else:
        reserved = {target, image_column, id_column, group_column}
        spec = DatasetSpec(name=name, id_column=id_column, target=target,
                           image_column=image_column, group_column=group_column,
                           fields=infer_fields(table, reserved), image_size=image_size,
                           min_class_count=min_class_count)
    table[image_column] = table[image_column].astype(str)
    table[target] = table[target].astype(str)
    images = {}
    for rel in table[image_column]:
        p = Path(images_dir) / rel
        if p.is_file():
            images[rel] = p.read_bytes()
    return write_dataset(out_dir, spec, table, images, None, {"table": str(table_path)})
