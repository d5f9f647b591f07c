"""File-to-file batch scoring through the Predictor, one output row per input row.

Rows are scored in chunks so memory stays flat; a row whose fields or image are bad gets
an `error` and empty probabilities, and every other row is still scored. A table's size
is known before it is read (`count_rows`: the Parquet footer, a streamed CSV count) and
its rows are read a chunk at a time (`iter_row_chunks`), so a small file that claims
millions of rows is refused without loading it.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from modalfuse.config import installed
from modalfuse.data.builders.image_files import pattern_columns, pattern_name
from modalfuse.errors import InvalidInput
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.inference.safe_csv import write_csv
from modalfuse.progress import SILENT, ProgressReporter

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modalfuse.spec import DatasetSpec

TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# A CSV is read as written, as `data import` reads it: only an empty cell is missing ("NA"
# may be Namibia). A dataset's own markers (`DatasetSpec.na_values`) are applied by
# `parse_record(from_text=True)`, so every engine reads a CSV the same way.
CSV_NA_VALUES = [""]


class BatchInputError(InvalidInput):
    """The input file as a whole cannot be used (wrong format, no image column)."""


class RowChunk(NamedTuple):
    """Consecutive rows of a table: chunk `number` holds rows `start` .. start + len(rows)."""

    number: int
    start: int
    rows: pd.DataFrame


def parquet_available() -> bool:
    """Whether Parquet can be read and written here: pyarrow is the `parquet` extra, which
    the lean serve install leaves out (its batch jobs take and give CSV)."""
    return installed("pyarrow")


NO_PARQUET = ("this install reads and writes .csv tables only: .parquet needs pyarrow "
              "(pip install 'modalfuse[parquet]'); send a .csv instead")


def table_format(path: Path) -> str:
    """"csv" or "parquet" from the file's suffix; BatchInputError for anything else, and for
    Parquet where pyarrow is not installed."""
    path = Path(path)
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BatchInputError(f"input must be .csv or .parquet, got {path.suffix.lower()!r}")
    if fmt == "parquet" and not parquet_available():
        raise BatchInputError(NO_PARQUET)
    if not path.exists():
        raise BatchInputError(f"input {path} does not exist")
    return fmt


def _csv_is_blank(record: list[str]) -> bool:
    # pandas skips empty and whitespace-only lines; a quoted "" is a row (csv gives [""]).
    return not record or (len(record) == 1 and record[0] != "" and not record[0].strip())


def _csv_records(path: Path) -> Iterator[list[str]]:
    """The non-blank records of a CSV file, quoted newlines inside a record included."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for record in csv.reader(f):
                if not _csv_is_blank(record):
                    yield record
    except UnicodeDecodeError as e:
        raise BatchInputError(f"cannot read {path}: it is not UTF-8 text ({e.reason} at byte "
                              f"{e.start})") from None
    except csv.Error as e:
        raise BatchInputError(f"cannot read {path}: {e}") from None


def _parquet_file(path: Path) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise BatchInputError(f"cannot read {path}: {e}") from None


def table_columns(path: Path) -> list[str]:
    """The column names of a table, from its header or footer only."""
    path = Path(path)
    if table_format(path) == "parquet":
        schema = _parquet_file(path).schema_arrow
        meta = schema.pandas_metadata or {}
        index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
        return [n for n in schema.names if n not in index]
    header = next(_csv_records(path), None)
    if header is None:
        raise BatchInputError(f"cannot read {path}: it is empty (no header row)")
    return header


def count_rows(path: Path, stop_after: int | None = None) -> int:
    """Rows of a table without loading it: the Parquet footer, or a streamed count of CSV
    records (a quoted newline does not start a record).

    With `stop_after`, a CSV count stops at stop_after + 1: enough to refuse a table over a
    limit without reading the rest of it.
    """
    path = Path(path)
    if table_format(path) == "parquet":
        return int(_parquet_file(path).metadata.num_rows)
    records = _csv_records(path)
    if next(records, None) is None:  # the header
        raise BatchInputError(f"cannot read {path}: it is empty (no header row)")
    n = 0
    for _ in records:
        n += 1
        if stop_after is not None and n > stop_after:
            break
    return n


def _parquet_chunks(path: Path, chunk_rows: int, skip: Collection[int]) -> Iterator[RowChunk]:
    import pyarrow as pa

    pf = _parquet_file(path)
    meta = pf.metadata

    def wanted(first: int, stop: int) -> bool:  # does a row range touch a chunk not skipped?
        return any(i not in skip for i in range(first // chunk_rows,
                                                 (stop - 1) // chunk_rows + 1))

    def pieces() -> Iterator[tuple[int, pa.RecordBatch]]:
        at = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n and wanted(at, at + n):  # row groups wholly inside done chunks are not read
                pos = at
                for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[g]):
                    yield pos, batch
                    pos += batch.num_rows
            at += n

    def chunk(index: int, parts: list[pa.RecordBatch]) -> RowChunk:
        rows = pa.Table.from_batches(parts).to_pandas().reset_index(drop=True)
        return RowChunk(index, index * chunk_rows, rows)

    current, parts = -1, list[pa.RecordBatch]()
    for pos, batch in pieces():
        off = 0
        while off < batch.num_rows:
            index = (pos + off) // chunk_rows
            take = min(batch.num_rows - off, (index + 1) * chunk_rows - (pos + off))
            if index != current:
                if parts:
                    yield chunk(current, parts)
                current, parts = index, []
            if index not in skip:
                parts.append(batch.slice(off, take))
            off += take
    if parts:
        yield chunk(current, parts)


def iter_row_chunks(path: Path, chunk_rows: int, skip: Collection[int] = ()) -> Iterator[RowChunk]:
    """The rows of a table as consecutive chunks of `chunk_rows` (the last may be shorter),
    read one chunk at a time; chunks whose index is in `skip` are not yielded (and whole
    Parquet row groups inside skipped chunks are not even read).
    """
    path = Path(path)
    if chunk_rows < 1:
        raise InvalidInput(f"chunk_rows must be 1 or more, got {chunk_rows}")
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            yield from _parquet_chunks(path, chunk_rows, skip)
            return
        with pd.read_csv(path, keep_default_na=False, na_values=CSV_NA_VALUES,
                         chunksize=chunk_rows) as reader:
            for index, rows in enumerate(reader):
                if index not in skip:
                    yield RowChunk(index, index * chunk_rows, rows.reset_index(drop=True))
    except BatchInputError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for a broken file
        raise BatchInputError(f"cannot read {path}: {e}") from None


def read_rows(path: Path, max_rows: int | None = None) -> pd.DataFrame:
    """The whole table; with `max_rows`, a larger one is refused before it is loaded."""
    path = Path(path)
    fmt = table_format(path)
    if max_rows is not None:
        n = count_rows(path, stop_after=max_rows)
        if n > max_rows:
            raise BatchInputError(f"input {path} has {'more than ' if fmt == 'csv' else ''}"
                                  f"{max_rows if fmt == 'csv' else n} rows; the limit is "
                                  f"{max_rows}")
    try:
        if fmt == "csv":
            return pd.read_csv(path, keep_default_na=False, na_values=CSV_NA_VALUES)
        return pd.read_parquet(path)
    except Exception as e:  # pandas/pyarrow raise many types for a broken file
        raise BatchInputError(f"cannot read {path}: {e}") from None


def load_image(images_dir: Path, name: Any) -> bytes | None:
    """Image bytes of a row, or None when absent; refuses paths that leave images_dir."""
    return _read_image(os.path.realpath(images_dir), name)


def _read_image(root: str, name: Any) -> bytes | None:
    """`load_image` with the images folder already resolved (once per chunk, not per row:
    resolving it was a third of the cost of reading an image)."""
    if _blank(name):
        return None
    p = os.path.realpath(os.path.join(root, str(name)))
    if os.path.commonpath([root, p]) != root:
        raise InvalidInput(f"image path {name!r} leaves the images folder")
    try:
        with open(p, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def score_frame(predictor: Predictor, rows: pd.DataFrame, images_dir: Path,
                from_text: bool = False, with_ids: bool = False) -> pd.DataFrame:
    """Score table rows; `from_text=True` for rows read from CSV (see `parse_record`).
    `with_ids` gives every scored row a `prediction_id` (served traffic: jobs, for feedback).

    A row with an empty image cell is scored from its fields alone (when the model has a
    fields-only model); a row naming an image that is not there is an error row, never
    scored without it. Besides the probabilities, each scored row gets its prediction set
    (labels joined by `|`), its OOD flag and the modalities it was scored from.
    """
    spec = predictor.spec
    records = table_records(spec, rows)
    blobs: list[bytes | None] = []
    path_errors: dict[int, str] = {}
    root = os.path.realpath(images_dir)
    for i, name in enumerate(row_image_names(spec, rows, images_dir)):
        try:
            if isinstance(name, InvalidInput):
                raise name
            data = _read_image(root, name)
        except ValueError as e:
            data, path_errors[i] = None, str(e)
        if data is None and i not in path_errors and not _blank(name):
            path_errors[i] = f"image file {name!r} not found under the images folder"
        blobs.append(data)
    keep = [i for i in range(len(records)) if i not in path_errors]
    ids = [uuid.uuid4().hex for _ in keep] if with_ids else None
    scored = predictor.predict([records[i] for i in keep], [blobs[i] for i in keep], top_k=1,
                               from_text=from_text, prediction_ids=ids)
    results: list[dict[str, Any]] = [{"error": {spec.image_column: e}} for e in
                                     (path_errors.get(i, "") for i in range(len(records)))]
    for i, r in zip(keep, scored, strict=True):
        results[i] = r
    out: dict[str, Any] = {}
    if spec.id_column in rows:
        out[spec.id_column] = rows[spec.id_column].to_numpy()
    labels = predictor.labels
    probs = np.full((len(rows), len(labels)), np.nan)
    predicted: list[str | None] = []
    errors: list[str | None] = []
    sets: list[str | None] = []
    ood: list[bool | None] = []
    used: list[str | None] = []
    for i, r in enumerate(results):
        if "error" in r:
            predicted.append(None)
            errors.append(json.dumps(r["error"], sort_keys=True))
            sets.append(None)
            ood.append(None)
            used.append(None)
        else:
            probs[i] = [r["probabilities"][lab] for lab in labels]
            predicted.append(r["label"])
            errors.append(None)
            pset = r.get("prediction_set")
            sets.append("|".join(pset["labels"]) if pset else None)
            ood.append(bool(r["ood"]["flag"]) if r.get("ood") else None)
            used.append("+".join(r["modalities"]["used"]) if r.get("modalities") else None)
    out["predicted"] = predicted
    for j, lab in enumerate(labels):
        out[f"proba_{lab}"] = probs[:, j]
    out["prediction_set"] = sets
    out["ood"] = pd.array(ood, dtype="boolean")
    out["modalities"] = used
    out["error"] = errors
    out["model_version"] = predictor.model_version
    if ids is not None:
        by_row = dict(zip(keep, ids, strict=True))
        out["prediction_id"] = [None if e is not None else by_row[i]
                                for i, e in enumerate(errors)]
    return pd.DataFrame(out)


def row_image_names(spec: DatasetSpec, rows: pd.DataFrame, images_dir: Path) -> list[Any]:
    """Each row's image file name: its image column, else the import's file-name pattern
    (`{id}` -> the first of `<id>.png`, `<id>.jpg`, ... under `images_dir`). A row the pattern
    cannot name gets the InvalidInput that says why, to become its error row."""
    if spec.image_column in rows or not spec.image_pattern:
        return list(rows[spec.image_column])
    names: list[Any] = []
    for r in rows.to_dict("records"):
        try:
            names.append(pattern_name(r, spec.image_pattern, Path(images_dir)))
        except InvalidInput as e:
            names.append(e)
    return names


def image_source_missing(spec: DatasetSpec, columns: list[str]) -> str | None:
    """Why rows with these columns cannot name their images, or None when they can."""
    if spec.image_column in columns:
        return None
    if spec.image_pattern:
        absent = [c for c in pattern_columns(spec.image_pattern) if c not in columns]
        if not absent:
            return None
        return (f"input has no image column {spec.image_column!r} and lacks {absent}, which the "
                f"file-name pattern {spec.image_pattern!r} needs; columns: {columns}")
    return f"input has no image column {spec.image_column!r}; columns: {columns}"


def _blank(name: Any) -> bool:
    """An empty image cell: no image was given for the row."""
    return (name is None or name is pd.NA or name is pd.NaT
            or (isinstance(name, float) and np.isnan(name)) or str(name).strip() == "")


def predict_file(predictor: Predictor, input_path: Path, images_dir: Path, output: Path,
                 chunk_size: int = 256, reporter: ProgressReporter = SILENT) -> dict:
    """Score a CSV or Parquet file chunk by chunk into a CSV or Parquet output, one row per input row.

    Rows that cannot be scored get an `error` instead of a label; returns row and error counts.
    Each chunk is reported to `reporter` as `row` steps.
    """
    if Path(output).suffix.lower() != ".csv" and not parquet_available():
        raise BatchInputError(f"cannot write {Path(output).name}: {NO_PARQUET}")
    columns = table_columns(input_path)
    if (why := image_source_missing(predictor.spec, columns)) is not None:
        raise BatchInputError(why)
    parts = []
    total, done = count_rows(input_path), 0
    reporter.on_step("row", "scoring", 0, total)
    for chunk in iter_row_chunks(input_path, chunk_size):  # a chunk at a time, never whole
        parts.append(score_frame(predictor, chunk.rows, images_dir,
                                 from_text=table_format(input_path) == "csv"))
        done += len(chunk.rows)
        reporter.on_step("row", "scoring", done, total)
    if not parts:  # no rows: still one (empty) output with every column
        empty = pd.DataFrame(columns=columns)
        parts.append(score_frame(predictor, empty, images_dir))
    result = pd.concat(parts, ignore_index=True)
    result.insert(0, "row", np.arange(len(result)))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".csv":
        write_csv(result, output)  # formula-like text escaped for spreadsheets
    else:
        result.to_parquet(output, index=False)
    return {"rows": len(result), "errors": int(result["error"].notna().sum())}
