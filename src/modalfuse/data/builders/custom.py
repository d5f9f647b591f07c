"""Bring your own dataset: a CSV/Parquet table and its images -> a modalfuse dataset.

Where each row's image is comes from a column (names, paths, URLs) or a file-name pattern such
as `{id}.png` (data/builders/image_files.py).

Field kinds are inferred (numbers -> numeric, true/false -> boolean, text with '|' ->
multi-valued, other text -> categorical) unless a spec JSON is given; the result is the
same folder layout as the built-in dataset, so every later stage works unchanged.

The table is taken as written: only an empty cell is missing, unless the caller names
other markers (`na_values`); "NA", "None" or "null" are values like any other (Namibia's
country code is "NA"). A row that breaks the schema is named by its line in the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from modalfuse.data.builders.image_files import (
    EXAMPLES_SHOWN,
    IMAGE_EXTENSIONS,
    LocatedImages,
    locate_images,
    pattern_hint,
)
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


@dataclass
class ImportResult:
    """What `build_custom` wrote: the dataset folder, and how the rows' images were found."""

    path: Path
    images: dict[str, int]  # rows, found, missing, undecodable, downloaded, skipped
    image_column: str


def _no_image_message(located: LocatedImages, table: pd.DataFrame, locations: list[str],
                      id_column: str, hint: str | None) -> str:
    """The error of an import whose rows lack an image: counts, the first rows, what to do."""
    s = located.summary()
    lines = [f"{s['missing'] + s['undecodable']} of {s['rows']} rows have no usable image "
             f"(found {s['found']}, missing {s['missing']}, undecodable {s['undecodable']}):"]
    for kind, rows in (("missing", located.missing), ("undecodable", located.undecodable)):
        for i, why in rows[:EXAMPLES_SHOWN]:
            lines.append(f"- {locations[i]} ({id_column} {_shown(table[id_column].iloc[i])}): "
                         f"{kind}, tried {why}")
        if len(rows) > EXAMPLES_SHOWN:
            lines.append(f"- ... and {len(rows) - EXAMPLES_SHOWN} more {kind}")
    if hint:
        lines.append(f"the images look named after a column: try {hint}")
    lines.append("--images names the folder relative paths are read under (default: the table's "
                 "folder); --skip-missing imports the other rows and reports these")
    return "\n".join(lines)


def build_custom(table_path: Path, out_dir: Path, name: str, target: str, *,
                 images_dir: Path | None = None, image_column: str | None = None,
                 image_pattern: str | None = None,
                 image_extensions: Sequence[str] = IMAGE_EXTENSIONS, skip_missing: bool = False,
                 id_column: str = "id", group_column: str | None = None,
                 spec_path: Path | None = None, image_size: int = 96,
                 min_class_count: int = 2, na_values: Sequence[str] = ()) -> ImportResult:
    """Import a table and its images as dataset `name` in `out_dir`; `na_values` also mean missing.

    Each row's image comes from `image_column` (file names or paths under `images_dir`, absolute
    paths or URLs) or from `image_pattern` (`{id}.png`); with neither, a column named `image`.
    Rows without a usable image stop the import, or with `skip_missing` are left out and counted.
    """
    table_path = Path(table_path)
    table = read_table(table_path, na_values)
    locations = row_locations(table_path, len(table))
    images_dir = Path(images_dir) if images_dir is not None else table_path.parent
    if image_column is None and image_pattern is None:
        if "image" not in table.columns:
            raise InvalidInput(
                f"{table_path} has no column 'image'. Say where each row's image is: "
                "--image-column COLUMN (file names, paths or URLs) or, for images named after a "
                f"column, --image-pattern '{{{id_column}}}.png'; columns: {list(table.columns)}")
        image_column = "image"
    for col, option in ((target, "--target"), (id_column, "--id-column"),
                        (image_column, "--image-column")):
        if col is not None and col not in table.columns:
            raise InvalidInput(f"column {col!r} ({option}) not in {table_path}; "
                               f"columns: {list(table.columns)}")
    copied: set[str] = set()
    if group_column is None:
        group_column = "_group"
        copied.add(group_column)
        table[group_column] = table[id_column]  # no groups given: each row is its own group
    located = locate_images(table, images_dir, image_column=image_column,
                            image_pattern=image_pattern, extensions=image_extensions,
                            image_size=image_size)
    if image_pattern is not None:  # the found file names become the image column
        image_column = "image" if "image" not in table.columns else "_image"
        copied.add(image_column)
    assert image_column is not None
    table[image_column] = located.names
    counts = {**located.summary(), "skipped": 0}
    if located.missing or located.undecodable:
        if not skip_missing:
            hint = pattern_hint(table, images_dir, str(image_column)) if image_pattern is None else None
            raise DatasetValidationError(_no_image_message(located, table, locations, id_column, hint))
        keep = table[image_column].notna().to_numpy()
        counts["skipped"] = int((~keep).sum())
        table = table[keep].reset_index(drop=True)
        locations = [loc for loc, k in zip(locations, keep, strict=True) if k]
    if spec_path:
        spec = DatasetSpec.load(spec_path)
        if na_values:
            spec = spec.model_copy(update={"na_values": sorted({*spec.na_values, *na_values})})
        if image_pattern is not None:
            spec = spec.model_copy(update={"image_pattern": image_pattern})
        if image_pattern is not None and spec.image_column != image_column:
            table = table.rename(columns={image_column: spec.image_column})
            copied.add(spec.image_column)
            image_column = spec.image_column
    else:
        reserved = {target, image_column, id_column, group_column}
        spec = DatasetSpec(name=name, id_column=id_column, target=target,
                           image_column=image_column, group_column=group_column,
                           fields=infer_fields(table, reserved), image_size=image_size,
                           min_class_count=min_class_count, na_values=sorted(set(na_values)),
                           image_pattern=image_pattern)
    # text as written, but a missing target stays missing (not the string 'nan')
    table[target] = table[target].map(str, na_action="ignore")
    validate_imported(spec, table, locations, table_path, frozenset(copied))
    path = write_dataset(out_dir, spec, table, located.files, None,
                         {"table": str(table_path), "images": json.dumps(counts)})
    return ImportResult(path, counts, str(image_column))
