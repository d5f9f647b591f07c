"""A dataset on disk: spec.json, a Parquet table, an images/ folder and a manifest.

The manifest's `version` is a content hash of the table and every image: two folders
with the same version hold the same data, wherever and whenever they were built.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from modalfuse import __version__
from modalfuse.data.schema import DatasetValidationError, validate_images, validate_table
from modalfuse.errors import MissingData
from modalfuse.spec import DatasetSpec


def table_digest(table: pd.DataFrame) -> str:
    """Hash of a table that does not depend on the Parquet writer's version."""
    return hashlib.sha256(table.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def images_digest(files: dict[str, bytes]) -> str:
    """Hash of a set of named image files, independent of the order they are given in."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


@dataclass
class Dataset:
    """A built dataset loaded from its folder: spec, table, manifest and (optionally) extra views.

    Every stage (split, train, evaluate, EDA) takes one; images are read from disk on demand.
    """

    root: Path
    spec: DatasetSpec
    table: pd.DataFrame
    manifest: dict
    views: pd.DataFrame | None = None

    @property
    def version(self) -> str:
        """The content version from the manifest (a hash of table and images)."""
        return str(self.manifest["version"])

    @property
    def image_dir(self) -> Path:
        """The folder holding the dataset's images."""
        return self.root / "images"

    def image_path(self, name: str) -> Path:
        """The path of the image a row names."""
        return self.image_dir / name

    def image_bytes(self, name: str) -> bytes:
        """The raw bytes of the image a row names."""
        return self.image_path(name).read_bytes()

    def row_images(self, table: pd.DataFrame | None = None) -> list[bytes]:
        """The image bytes of every row of `table` (the whole table by default), in row order."""
        t = self.table if table is None else table
        return [self.image_bytes(n) for n in t[self.spec.image_column]]


def write_dataset(out_dir: Path, spec: DatasetSpec, table: pd.DataFrame,
                  images: dict[str, bytes], views: pd.DataFrame | None,
                  sources: dict[str, str]) -> Path:
    """Validate, then write atomically: a failed build leaves the previous dataset intact."""
    validate_table(spec, table)
    validate_images(spec, table, images)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    for name, data in images.items():
        p = tmp / "images" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    table.to_parquet(tmp / spec.table, index=False)
    if views is not None and spec.views_table:
        views.to_parquet(tmp / spec.views_table, index=False)
    spec.save(tmp / "spec.json")
    t_hash, i_hash = table_digest(table), images_digest(images)
    manifest = {
        "name": spec.name,
        "version": hashlib.sha256((t_hash + i_hash).encode()).hexdigest()[:16],
        "table_sha256": t_hash,
        "images_sha256": i_hash,
        "rows": len(table),
        "images": len(images),
        "classes": table[spec.target].value_counts().sort_index().to_dict(),
        "sources": sources,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "modalfuse_version": __version__,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_dataset(root: Path, validate: bool = True) -> Dataset:
    """The dataset in folder `root`, checked against its schema and manifest unless told not to."""
    root = Path(root)
    if not (root / "spec.json").exists():
        how = ("build it with `modalfuse data build`" if root.name == "pokemon" else
               "import one with `modalfuse data import` (docs/own-data.md)")
        raise MissingData(f"no dataset at {root} (spec.json missing); {how}")
    spec = DatasetSpec.load(root / "spec.json")
    table = pd.read_parquet(root / spec.table)
    manifest = json.loads((root / "manifest.json").read_text())
    views = None
    if spec.views_table and (root / spec.views_table).exists():
        views = pd.read_parquet(root / spec.views_table)
    ds = Dataset(root=root, spec=spec, table=table, manifest=manifest, views=views)
    if validate:
        validate_dataset(ds)
    return ds


def validate_dataset(ds: Dataset) -> None:
    """Check a loaded dataset: its table against the schema and the manifest's hash, and every
    image present and decodable."""
    validate_table(ds.spec, ds.table)
    if table_digest(ds.table) != ds.manifest.get("table_sha256"):
        raise DatasetValidationError(
            f"{ds.root / ds.spec.table} changed since the dataset was built (hash differs from "
            "manifest.json); build or import it again"
        )
    files = {}
    for name in ds.table[ds.spec.image_column]:
        p = ds.image_path(name)
        if p.exists():
            files[name] = p.read_bytes()
    validate_images(ds.spec, ds.table, files)
