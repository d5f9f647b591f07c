"""One self-describing model bundle: preprocessing, model, schema, labels, metrics, versions.

A bundle is a folder. `bundle.json` says what wrote it (modalfuse and library versions),
what it was trained on (dataset name and content version) and how to rebuild the
Predictor; loading refuses a bundle whose format or libraries the running code cannot
honour, and says what to install.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib import metadata
from pathlib import Path

from modalfuse import __version__
from modalfuse.errors import ModelError
from modalfuse.features.preprocess import Preprocessor
from modalfuse.inference.companions import Companions
from modalfuse.models.registry import Model, kind_libraries, load_model
from modalfuse.spec import DatasetSpec

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
# Versions bundle.json records besides the model kinds' own libraries (the registry's):
# what reads the inputs, then what trained the model.
INPUT_LIBRARIES = ("numpy", "pandas", "pillow")
TRAINING_LIBRARIES = ("lightgbm", "onnxmltools", "scikit-learn", "torch")


def model_kinds(model_meta: dict) -> list[str]:
    """The kind of a model and of every part nested in it (fused models hold parts)."""
    return [model_meta.get("kind", ""),
            *[k for p in model_meta.get("parts", []) for k in model_kinds(p)]]


class BundleError(ModelError):
    """A bundle that is missing, broken, or written by incompatible software."""


class BundleVersionWarning(UserWarning):
    """A bundle written by another minor version of a library: it loads, but check it."""


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries a bundle depends on, as bundle.json records them."""
    libraries = (*INPUT_LIBRARIES, *kind_libraries(), *TRAINING_LIBRARIES)
    return {d: installed_version(d) for d in dict.fromkeys(libraries)}


@dataclass
class ModelBundle:
    """A loaded bundle: everything serving needs to rebuild the Predictor, and what it was made from.

    One object owns the model, its preprocessor, spec and labels and the bundle's meta; the
    Predictor, evaluation and tracking all read it.
    """

    path: Path
    meta: dict
    spec: DatasetSpec
    preprocessor: Preprocessor
    model: Model
    companions: Companions = field(default_factory=Companions)

    @property
    def labels(self) -> list[str]:
        """The class labels, in the order of the model's probability columns."""
        return list(self.meta["labels"])

    @property
    def model_version(self) -> str:
        """The bundle's version: dataset, kind and a hash of its content."""
        return str(self.meta["model_version"])

    @property
    def metrics(self) -> dict:
        """The metrics recorded at training and evaluation (CV, test)."""
        return dict(self.meta.get("metrics", {}))

    @cached_property
    def model_digest(self) -> str:
        """A digest of what decides a prediction: the model's description, labels, the fitted
        preprocessor and the spec. Two bundles with one digest answer alike (async jobs
        check it, so a job is never finished by another model)."""
        h = hashlib.sha256(self.model_version.encode())
        h.update(json.dumps({"model": self.meta.get("model"), "labels": self.labels,
                             "companions": self.meta.get("companions")},
                            sort_keys=True, default=str).encode())
        for name in ("preprocessor.json", "spec.json"):
            path = self.path / name
            h.update(path.read_bytes() if path.exists() else b"")
        return h.hexdigest()[:16]


def _content_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != BUNDLE_FILE:
            h.update(p.relative_to(directory).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def version_tag(model_meta: dict, training: dict | None) -> str:
    """The middle of a model version: the recipe that trained it (`gbm`, `stacking`, ...), else
    (optimized or hand-made bundles) the served kind."""
    training = training or {}
    recipe = training.get("config", {}).get("model")
    return str(recipe) if recipe and "optimized" not in training else str(model_meta["kind"])


def save_bundle(directory: Path, spec: DatasetSpec, preprocessor: Preprocessor, model: Model,
                labels: list[str], dataset: dict, metrics: dict | None = None,
                training: dict | None = None, companions: Companions | None = None) -> ModelBundle:
    """Write a bundle folder atomically and return it loaded; `companions` (modality models,
    conformal calibration, OOD detectors) are saved with it when given."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model_meta = model.save(tmp)
    (tmp / "preprocessor.json").write_text(json.dumps(preprocessor.to_dict()))
    (tmp / "spec.json").write_text(spec.model_dump_json(indent=2))
    companions_meta = companions.save(tmp) if companions is not None else None
    content = _content_hash(tmp)
    meta = {
        "format": "modalfuse-bundle",
        "format_version": BUNDLE_FORMAT,
        "model_version": f"{spec.name}-{version_tag(model_meta, training)}-{content[:12]}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "modalfuse_version": __version__,
        "python": platform.python_version(),
        "libraries": library_versions(),
        "dataset": dataset,
        "labels": labels,
        "model": model_meta,
        "metrics": metrics or {},
        "training": training or {},
        **({"companions": companions_meta} if companions_meta else {}),
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, default=str))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return load_bundle(directory)


def update_bundle_meta(directory: Path, **fields) -> None:
    """Add evaluation results (metrics, reports) after the bundle was written."""
    path = Path(directory) / BUNDLE_FILE
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta, indent=2, default=str))


def _check_compatible(meta: dict, path: Path) -> None:
    if meta.get("format") != "modalfuse-bundle":
        raise BundleError(f"{path} is not a modalfuse bundle (no 'format: modalfuse-bundle')")
    if meta.get("format_version") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path} has bundle format {meta.get('format_version')}, this modalfuse "
            f"{__version__} reads format {BUNDLE_FORMAT}; install the modalfuse version that "
            f"wrote it ({meta.get('modalfuse_version')}) or retrain with this one"
        )
    kinds = model_kinds(meta["model"])
    for m in meta.get("companions", {}).get("models", {}).values():
        kinds += model_kinds(m["model"])
    for lib in kind_libraries(kinds):
        wrote, have = meta.get("libraries", {}).get(lib), installed_version(lib)
        if wrote is None:
            continue
        if have is None:
            raise BundleError(f"{path} needs {lib} (it was written with {lib}=={wrote}); "
                              f"install it: pip install '{lib}=={wrote}'")
        if wrote.split(".")[0] != have.split(".")[0]:
            raise BundleError(
                f"{path} was written with {lib} {wrote}, but {lib} {have} is installed; a "
                f"different major version may read the model differently. Install "
                f"'{lib}=={wrote}' or retrain the bundle with {lib} {have}."
            )
        if wrote.split(".")[:2] != have.split(".")[:2]:
            warnings.warn(f"{path} was written with {lib} {wrote}, running {lib} {have}",
                          BundleVersionWarning, stacklevel=3)


def load_bundle(directory: Path) -> ModelBundle:
    """The bundle in `directory`, with its format and libraries checked (BundleError says what to do)."""
    directory = Path(directory)
    path = directory / BUNDLE_FILE
    if not path.exists():
        raise BundleError(
            f"no model bundle at {directory} ({BUNDLE_FILE} missing); train one with "
            "`modalfuse train` or point MODALFUSE_BUNDLE at a bundle folder"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    _check_compatible(meta, directory)
    spec = DatasetSpec.load(directory / "spec.json")
    pre = Preprocessor.from_dict(spec, json.loads((directory / "preprocessor.json").read_text()))
    model = load_model(directory, meta["model"])
    return ModelBundle(path=directory, meta=meta, spec=spec, preprocessor=pre, model=model,
                       companions=Companions.load(directory, meta.get("companions")))
