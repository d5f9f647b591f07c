"""Settings read from the environment (paths, limits, serving options).

Nothing here touches the disk at import time: paths are computed, never created.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modalfuse.errors import InvalidInput, MissingData


def default_data_dir() -> Path:
    """Where modalfuse keeps data, caches and artifacts unless MODALFUSE_DATA_DIR says otherwise.

    A per-user data folder (XDG) rather than the working directory, so that a command
    gives the same result wherever it is run from.
    """
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "modalfuse"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """Seconds from a positive number or a string like "90", "45s", "30m", "1.5h", "7d" or "2w":
    the one reader of durations, for settings (MODALFUSE_JOB_TTL=7d) and CLI options
    (`tune --time-budget 1d`) alike."""
    text = str(value).strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInput(f"duration {value!r} is not a positive number of seconds (e.g. 3600) "
                           f"or of one of the units {', '.join(_DURATION_UNITS)} "
                           "(e.g. 90s, 10m, 12h, 7d)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """One typed settings object; every field can be set as MODALFUSE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="MODALFUSE_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # The dataset commands use when `-d` is not given (data/current.py says how it is chosen).
    dataset: str | None = None
    # Serving
    bundle: Path | None = None
    environment: Literal["development", "production"] = "development"
    api_key: str = ""
    max_batch_rows: int = Field(default=256, ge=1, le=100_000)
    max_image_bytes: int = Field(default=2_000_000, ge=1_000)
    max_image_pixels: int = Field(default=4_000_000, ge=64)
    max_body_bytes: int = Field(default=64_000_000, ge=10_000)
    # CPU budget of the open routes (serve/ratelimit.py). Pixels: what one request may decode,
    # summed over a batch, checked from the image headers before any pixel is decoded.
    # Per client (IP, plus a valid API key): a token bucket and a cap on requests in flight;
    # 0 turns a limit off. Generous by default: `modalfuse bench serve` runs c=16 from one IP.
    max_request_pixels: int = Field(default=16_000_000, ge=64)
    rate_limit_per_s: float = Field(default=500.0, ge=0)
    rate_limit_burst: int = Field(default=1_000, ge=1)
    max_concurrent_per_client: int = Field(default=32, ge=0)
    # Where the API's model comes from: a registry URI (models:/NAME@champion) wins over `bundle`.
    model_uri: str | None = None
    # `modalfuse train` logs to MLflow (MLFLOW_TRACKING_URI, else the embedded store) unless off.
    tracking: bool = True
    # Async jobs and monitoring (serve/jobs.py, monitor/)
    jobs_root: Path | None = None  # server-side inputs a job may name; None: uploads only
    job_chunk_rows: int = Field(default=256, ge=1, le=100_000)
    max_job_rows: int = Field(default=1_000_000, ge=1)
    max_zip_members: int = Field(default=100_000, ge=1)
    max_zip_unpacked_bytes: int = Field(default=2_000_000_000, ge=10_000)
    # Uploads (inference/uploads.py, the same for /v1/jobs and the UI's batch tab): an entry, or
    # the whole zip, unpacking to more than this many times its packed size is a zip bomb
    # (images are compressed already and barely shrink); the UI scores while a browser
    # waits, so it takes at most max_ui_batch_rows rows (and never more than max_job_rows):
    # it needs no key, so it sells at most ~2 s of CPU per upload; larger tables go through
    # the async jobs API (/v1/jobs, with the key).
    max_zip_ratio: float = Field(default=200.0, ge=1)
    max_ui_batch_rows: int = Field(default=2_000, ge=1)
    job_lease_s: float = Field(default=30.0, gt=0)  # a worker that stops renewing loses its job
    # A job started by another model (a server restarted or reloaded with a new one): rescore
    # it whole with this model, or leave it for a worker serving its own. Never a mix.
    job_model_policy: Literal["rescore", "wait"] = "rescore"
    log_predictions: bool = True
    # Worker processes behind the port (`modalfuse serve --workers N` sets it for its workers):
    # above 1, admin actions reach every worker through serving/control.db (serve/workers.py).
    workers: int = Field(default=1, ge=1, le=64)
    # Retention (serve/retention.py, monitor/predlog/retention.py): finished jobs' rows and folders are
    # deleted job_ttl after they finished; the prediction log drops rows older than
    # prediction_log_max_age, then the oldest rows until its file is under the size limit.
    # Durations are seconds or "30m", "12h", "7d".
    job_ttl: Duration = Field(default=7 * 86400, gt=0)
    prediction_log_max_age: Duration = Field(default=30 * 86400, gt=0)
    prediction_log_max_mb: float = Field(default=200.0, gt=0)
    retention_sweep_every: Duration = Field(default=600, gt=0)  # how often jobs are swept
    # The production loop (docs/operations.md).
    # Live performance on labelled traffic (POST /v1/feedback): windows of this length, and an
    # alert when a window with at least perf_min_labels labels falls below a threshold.
    perf_window: Duration = Field(default=86400, gt=0)
    perf_min_labels: int = Field(default=30, ge=1)
    alert_min_accuracy: float = Field(default=0.55, ge=0, le=1)
    alert_min_macro_f1: float = Field(default=0.45, ge=0, le=1)
    alert_max_ece: float = Field(default=0.15, ge=0, le=1)
    alert_max_drift_share: float = Field(default=0.5, ge=0, le=1)  # share of drifted columns
    # Releases: a challenger (registry URI or bundle) scored in the shadow of every request,
    # and a canary share of traffic (sticky by client key) answered by it. Empty: none.
    shadow_model_uri: str | None = None
    shadow_bundle: Path | None = None
    shadow_queue_size: int = Field(default=1_000, ge=1)  # work beyond it is dropped, counted
    canary_share: float = Field(default=0.0, ge=0, le=1)
    canary_model_uri: str | None = None
    canary_bundle: Path | None = None

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.environment == "production" and len(self.api_key) < 16:
            raise ValueError(
                "MODALFUSE_API_KEY must be set to at least 16 characters when "
                "MODALFUSE_ENVIRONMENT=production"
            )
        return self

    # Folder layout under data_dir: one place for everything the project writes.
    @property
    def cache_dir(self) -> Path:
        """Where downloaded sources are kept between builds."""
        return self.data_dir / "cache"

    @property
    def datasets_dir(self) -> Path:
        """The folder that holds one folder per built dataset."""
        return self.data_dir / "datasets"

    @property
    def models_dir(self) -> Path:
        """The folder that holds trained bundles, one folder per dataset."""
        return self.data_dir / "models"

    @property
    def reports_dir(self) -> Path:
        """The folder benchmarks, EDA and monitoring reports are written to."""
        return self.data_dir / "reports"

    @property
    def mlflow_dir(self) -> Path:
        """The embedded MLflow store: mlflow.db (runs, registry) and artifacts/."""
        return self.data_dir / "mlflow"

    def dataset_dir(self, name: str) -> Path:
        """The folder of the built dataset `name`; an empty name (no `-d` and nothing chosen, see
        `modalfuse.data.current`) raises the error that says how to choose one."""
        if not name:
            name = choose_dataset(self).name
        return self.datasets_dir / name

    @property
    def current_dataset_file(self) -> Path:
        """Where `modalfuse data use NAME` records the dataset commands use by default."""
        return self.data_dir / "current_dataset"

    def default_bundle(self, dataset: str) -> Path:
        """The bundle `modalfuse train` last wrote for `dataset` (served when nothing else is named)."""
        return self.models_dir / self.dataset_dir(dataset).name / "latest"


# Which dataset a command works on when `-d` is not given. In order: `MODALFUSE_DATASET`, then
# the dataset `modalfuse data use NAME` recorded, then the only dataset in the data folder. With
# several and no choice made, the command stops and lists them rather than guessing. Nothing here
# names the built-in dataset: a user who never built it never reads its name.

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


def installed(module: str) -> bool:
    """Whether `module` is an installed package or module here (the optional extras: mlflow,
    gradio, pyarrow). A bare folder of that name on `sys.path` (a data folder called `mlflow`
    under the working directory) is a namespace package, not an install, and does not count."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None

