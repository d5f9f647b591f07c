"""Bring your own dataset: a CSV/Parquet table with an image-file column -> a modalfuse dataset.

Field kinds are inferred (numbers -> numeric, true/false -> boolean, text with '|' ->
multi-valued, other text -> categorical) unless a spec JSON is given; the result is the
same folder layout as the built-in dataset, so every later stage works unchanged.

The table is taken as written: only an empty cell is missing, unless the caller names
other markers (`na_values`); "NA", "None" or "null" are values like any other (Namibia's
country code is "NA"). A row that breaks the schema is named by its line in the file.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from modalfuse.data.dataset import write_dataset
from modalfuse.data.schema import DatasetValidationError, table_schema
from modalfuse.errors import InvalidInput
from modalfuse.spec import DatasetSpec, FieldKind, FieldSpec

ROWS_SHOWN_PER_RULE = 10  # a rule broken by thousands of rows still gives a short message


def read_table(path: Path, na_values: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet table; only empty cells and the given `na_values` are missing."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=["", *na_values])
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
        if na_values:  # Parquet nulls are already nulls; the markers apply to text columns only
            for col in table.columns:
                if not pd.api.types.is_numeric_dtype(table[col]):
                    table[col] = table[col].mask(table[col].isin(list(na_values)))
        return table
    raise InvalidInput(f"table {path} must be .csv or .parquet, got {path.suffix!r}")


def row_locations(path: Path, n_rows: int) -> list[str]:
    """How to name each table row to the user: 'line L' of a CSV (header = line 1), else 'row N'.

    CSV lines come from the csv module so quoted line breaks and the blank lines pandas skips
    are counted as they are in the file; if the two readers disagree, rows are numbered.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        starts = []
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            end_of_previous = 0
            for record in reader:
                if record and not (len(record) == 1 and not record[0].strip()):
                    starts.append(end_of_previous + 1)
                end_of_previous = reader.line_num
        if len(starts) == n_rows + 1:  # the first one is the header
            return [f"line {n}" for n in starts[1:]]
    return [f"row {i + 1}" for i in range(n_rows)]


def infer_fields(table: pd.DataFrame, exclude: set[str], max_categories: int = 50) -> list[FieldSpec]:
    """One FieldSpec per column not in `exclude`, its kind guessed from the values as read."""
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


def _shown(value: object) -> str:
    """A cell as the user should read it in a message: its repr, or 'empty'."""
    return "empty" if pd.isna(value) else repr(value)


def validate_imported(spec: DatasetSpec, table: pd.DataFrame, locations: list[str],
                      source: Path, copied_columns: frozenset[str] = frozenset()) -> None:
    """Validate as `write_dataset` will, naming each bad row by its place in `source` and its id.

    Raises DatasetValidationError with one line per bad row and rule, e.g.
    `- line 5 (id 'NA'): column 'hp', rule not_nullable (value empty)`. Columns the import
    added as copies of another (`copied_columns`) are not reported: their source column is.
    """
    try:
        table_schema(spec).validate(table, lazy=True)
    except pa.errors.SchemaErrors as e:
        fc = e.failure_cases
        lines = []
        for (column, check), group in fc.groupby(["column", "check"], dropna=False, sort=False):
            if column in copied_columns:
                continue
            where = "table" if pd.isna(column) else f"column {column!r}"
            rows = group[group["index"].notna()]
            if rows.empty:  # a rule about the whole column: missing, wrong type
                values = group["failure_case"].astype(str).tolist()[:5]
                lines.append(f"- {where}, rule {check} (values {values})")
                continue
            for pos, value in zip(rows["index"][:ROWS_SHOWN_PER_RULE],
                                  rows["failure_case"][:ROWS_SHOWN_PER_RULE], strict=True):
                i = table.index.get_loc(pos)
                rid = _shown(table[spec.id_column].iloc[i]) if spec.id_column in table else "?"
                lines.append(f"- {locations[i]} ({spec.id_column} {rid}): {where}, rule {check} "
                             f"(value {_shown(value)})")
            if len(rows) > ROWS_SHOWN_PER_RULE:
                lines.append(f"- ... and {len(rows) - ROWS_SHOWN_PER_RULE} more row(s) "
                             f"breaking {where}, rule {check}")
        raise DatasetValidationError(
            f"{source} does not fit dataset {spec.name!r}:\n" + "\n".join(lines)
        ) from None


def build_custom(table_path: Path, images_dir: Path, out_dir: Path, name: str, target: str,
                 image_column: str, id_column: str, group_column: str | None = None,
                 spec_path: Path | None = None, image_size: int = 96,
                 min_class_count: int = 2, na_values: Sequence[str] = ()) -> Path:
    """Import a table and its images as dataset `name` in `out_dir`; `na_values` also mean missing."""
    table = read_table(table_path, na_values)
    locations = row_locations(table_path, len(table))
    for col in (target, image_column, id_column):
        if col not in table.columns:
            raise InvalidInput(f"column {col!r} not in {table_path}; columns: {list(table.columns)}")
    copied: frozenset[str] = frozenset()
    if group_column is None:
        group_column = "_group"
        copied = frozenset({group_column})
        table[group_column] = table[id_column]  # no groups given: each row is its own group
    if spec_path:
        spec = DatasetSpec.load(spec_path)
        if na_values:
            spec = spec.model_copy(update={"na_values": sorted({*spec.na_values, *na_values})})
    else:
        reserved = {target, image_column, id_column, group_column}
        spec = DatasetSpec(name=name, id_column=id_column, target=target,
                           image_column=image_column, group_column=group_column,
                           fields=infer_fields(table, reserved), image_size=image_size,
                           min_class_count=min_class_count, na_values=sorted(set(na_values)))
    # text as written, but a missing target or image stays missing (not the string 'nan')
    for col in (image_column, target):
        table[col] = table[col].map(str, na_action="ignore")
    validate_imported(spec, table, locations, Path(table_path), copied)
    images = {}
    for rel in table[image_column]:
        p = Path(images_dir) / rel
        if p.is_file():
            images[rel] = p.read_bytes()
    return write_dataset(out_dir, spec, table, images, None, {"table": str(table_path)})
