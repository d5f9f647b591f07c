"""Batch scoring on Ray Data: an actor pool of Predictors, one output row per input row.

Reads CSV or Parquet (local paths or s3://...) with Ray Data, scores every block with
`batch.score_frame` inside actors that each hold one `Predictor` (the one inference path;
image bytes are read in the actors from the images folder), and writes partitioned
Parquet. Every output row carries `row`, the input row's position, so order and
completeness can be checked; the job checks them itself before it reports success.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from modalfuse.errors import InvalidInput
from modalfuse.inference.batch import (
    CSV_NA_VALUES,
    BatchInputError,
    image_source_missing,
    score_frame,
)
from modalfuse.inference.bundle import load_bundle
from modalfuse.inference.predictor import Predictor

ROW = "row"
# The row index travels under a name no input column will have; it becomes `row` on output.
_ROW_TMP = "__modalfuse_row__"

STRING_COLUMNS = ("predicted", "error", "model_version")


@dataclass
class RayBatchConfig:
    """How the job runs: pool size, CPUs per actor, rows per batch, and where Ray is."""

    # None: start a local Ray for this job. A cluster started by `ray start --head` uses
    # token authentication: its drivers need RAY_AUTH_MODE=token and the cluster's token.
    # Workers must see the bundle and images folders at the same paths (shared storage).
    address: str | None = None
    actors: int = 2
    cpus_per_actor: float = 1.0
    batch_size: int = 256
    local_cpus: int | None = None  # CPUs of the local Ray; default min(actors, cores)


def _is_uri(path: str) -> bool:
    return "://" in path


def _fs_path(path: str):
    """(pyarrow filesystem, path in it) for a local path or a URI such as s3://bucket/key."""
    from pyarrow import fs

    if not _is_uri(path):
        path = str(Path(path).resolve())
    return fs.FileSystem.from_uri(path)


def _input_files(path: str) -> tuple[str, list[str]]:
    """The input's format ('csv' or 'parquet') and its files, sorted (a file or a folder)."""
    from pyarrow import fs as pafs

    filesystem, p = _fs_path(path)
    info = filesystem.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise BatchInputError(f"input {path} does not exist")
    if info.type == pafs.FileType.Directory:
        infos = filesystem.get_file_info(pafs.FileSelector(p, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and not Path(i.path).name.startswith((".", "_")))
    else:
        files = [p]
    kinds = {_format_of(f) for f in files}
    if not files:
        raise BatchInputError(f"input folder {path} holds no .csv or .parquet files")
    if len(kinds) != 1 or None in kinds:
        raise BatchInputError(
            f"input must be .csv or .parquet files of one kind; got suffixes "
            f"{sorted({Path(f).suffix for f in files})} in {path}")
    return kinds.pop(), files  # type: ignore[return-value]


def _format_of(file: str) -> str | None:
    suffix = Path(file).suffix.lower()
    return {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(suffix)


def _csv_header(path: str, file: str) -> list[str]:
    from pyarrow import csv

    filesystem, _ = _fs_path(path)
    try:
        with filesystem.open_input_stream(file) as f:
            return list(csv.open_csv(f, read_options=csv.ReadOptions(block_size=1 << 16))
                        .schema.names)
    except pa.ArrowInvalid as e:
        raise BatchInputError(f"cannot read {file}: {e}") from None


def _uri(path: str, file: str) -> str:
    if _is_uri(path):
        scheme = path.split("://", 1)[0]
        return f"{scheme}://{file}"
    return file


def input_columns(path: str | Path) -> tuple[str, list[str], list[str]]:
    """(format, files, column names) of the input, checked before any Ray work starts."""
    import pyarrow.parquet as pq

    path = str(path)
    kind, files = _input_files(path)
    if kind == "csv":
        return kind, files, _csv_header(path, files[0])
    filesystem, _ = _fs_path(path)
    try:
        return kind, files, list(pq.read_schema(files[0], filesystem=filesystem).names)
    except Exception as e:  # pyarrow raises many types for a broken file
        raise BatchInputError(f"cannot read {files[0]}: {e}") from None


def read_input(path: str | Path, kind: str, files: list[str], names: list[str]):
    """The input rows as a Ray Dataset.

    CSV columns are read as text and typed inside the actors exactly as `pandas.read_csv`
    types them, so a bad value deep in a large file becomes that row's error instead of
    failing Arrow's type inference for the whole file, and the result matches the local
    engine's.
    """
    import ray.data
    from pyarrow import csv

    uris = [_uri(str(path), f) for f in files]
    if kind == "parquet":
        return ray.data.read_parquet(uris)
    convert = csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                 null_values=CSV_NA_VALUES, strings_can_be_null=True)
    return ray.data.read_csv(uris, convert_options=convert)


def _typed_like_pandas(batch: pd.DataFrame) -> pd.DataFrame:
    """Text columns -> the dtypes `pandas.read_csv` would give them (the local engine's)."""
    buf = io.StringIO()
    batch.to_csv(buf, index=False)
    buf.seek(0)
    return pd.read_csv(buf, keep_default_na=False, na_values=CSV_NA_VALUES)


class PredictorActor:
    """One Predictor per actor, loaded once; scores pandas batches with `score_frame`."""

    def __init__(self, bundle: str, images_dir: str, csv_text: bool):
        self.predictor = Predictor.from_path(bundle)
        self.images_dir = Path(images_dir)
        self.csv_text = csv_text

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        rows = batch.drop(columns=[_ROW_TMP]).reset_index(drop=True)
        if self.csv_text:
            rows = _typed_like_pandas(rows)
        scored = score_frame(self.predictor, rows, self.images_dir, from_text=self.csv_text)
        scored.insert(0, ROW, batch[_ROW_TMP].to_numpy(dtype=np.int64))
        table = pa.Table.from_pandas(scored, preserve_index=False)
        # A batch whose rows are all errors (or all fine) must still write string columns,
        # not Arrow nulls, so every output file has one schema.
        for name in STRING_COLUMNS:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(name).cast(pa.string()))
        return table


def _with_row_index(ds, cfg: RayBatchConfig):
    """(ds with the input position of every row, row count).

    Ray Data keeps no order unless asked, so the input is materialized in order once
    (tabular fields only: images are read later, in the actors) and each block gets its
    offset; positions then survive any reordering in the actor pool. Blocks are also cut
    to a size that gives every actor several, since one block is one actor call. The
    driver does this one block at a time: a remote task per block cost more in worker
    start-up than the few milliseconds of work it holds.
    """
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    keep = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        mat = ds.materialize()
    finally:
        ctx.execution_options.preserve_order = keep
    n = mat.count()  # from block metadata, no extra pass
    per_block = int(np.clip(-(-n // (4 * cfg.actors)), cfg.batch_size, 16 * cfg.batch_size))
    indexed: list = []
    offset = 0
    for ref in mat.to_arrow_refs():
        block = ray.get(ref)
        indexed.extend(ray.put(piece) for piece in _index_pieces(block, offset, per_block))
        offset += block.num_rows
    if offset != n:
        raise RuntimeError(f"read {offset} rows but the dataset reports {n}")
    return ray.data.from_arrow_refs(indexed), n


def _index_pieces(block: pa.Table, offset: int, per_block: int) -> list[pa.Table]:
    """The block with its rows' input positions, cut into pieces of at most per_block rows."""
    block = block.append_column(_ROW_TMP, pa.array(np.arange(offset, offset + block.num_rows)))
    return [block.slice(i, per_block) for i in range(0, block.num_rows, per_block)]


def _start_ray(cfg: RayBatchConfig) -> bool:
    """Connect to cfg.address or start a small local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
    else:
        cpus = cfg.local_cpus or max(1, min(cfg.actors, os.cpu_count() or 1))
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def ray_predict_file(bundle: Path | str, input_path: Path | str, images_dir: Path | str,
                     output: Path | str, config: RayBatchConfig | None = None) -> dict[str, Any]:
    """Score `input_path` on Ray into the Parquet folder `output`; returns a summary.

    Raises BatchInputError when the input as a whole cannot be used, and RuntimeError if
    the written output does not hold exactly one row per input row.
    """
    import ray
    import ray.data

    cfg = config or RayBatchConfig()
    if cfg.actors < 1 or cfg.batch_size < 1 or cfg.cpus_per_actor <= 0:
        raise InvalidInput(f"actors ({cfg.actors}) and batch_size ({cfg.batch_size}) must be >= 1 "
                           f"and cpus_per_actor ({cfg.cpus_per_actor}) > 0")
    bundle = Path(bundle).resolve()
    spec = load_bundle(bundle).spec  # fails here, clearly, not in every actor
    kind, files, names = input_columns(input_path)
    if (why := image_source_missing(spec, list(names))) is not None:
        raise BatchInputError(why)
    started = _start_ray(cfg)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = True
        ds = read_input(input_path, kind, files, names)
        ds, n = _with_row_index(ds, cfg)
        scored = ds.map_batches(
            PredictorActor,
            fn_constructor_kwargs={"bundle": str(bundle),
                                   "images_dir": str(Path(images_dir).resolve()),
                                   "csv_text": kind == "csv"},
            batch_size=cfg.batch_size, batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.actors),
            num_cpus=cfg.cpus_per_actor,
        )
        out = str(output) if _is_uri(str(output)) else str(Path(output).resolve())
        scored.write_parquet(out, mode="overwrite")
        check = _read_parquet(out, columns=[ROW, "error"])
    finally:
        if started:
            ray.shutdown()
    rows = np.sort(check[ROW].to_numpy())
    if len(rows) != n or not np.array_equal(rows, np.arange(n)):
        raise RuntimeError(f"output {out} holds {len(rows)} rows for {n} input rows "
                           f"(rows must be exactly 0..{n - 1} once each)")
    return {"rows": n, "errors": int(check["error"].notna().sum()),
            "files": _count_files(out)}


def _count_files(out: str) -> int:
    from pyarrow import fs as pafs

    filesystem, p = _fs_path(out)
    infos = filesystem.get_file_info(pafs.FileSelector(p, recursive=True))
    return sum(1 for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def _read_parquet(output: str, columns: list[str] | None = None) -> pd.DataFrame:
    import pyarrow.parquet as pq

    filesystem, p = _fs_path(output)
    return pq.read_table(p, filesystem=filesystem, columns=columns).to_pandas()


def read_output(output: Path | str) -> pd.DataFrame:
    """The partitioned output as one frame in input order (for checks and small jobs)."""
    out = _read_parquet(str(output))
    return out.sort_values(ROW, kind="stable").reset_index(drop=True)
