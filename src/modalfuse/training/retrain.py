"""Retraining on the current data: rerun the DVC pipeline (or its train stage as a function),
register the new bundle as a challenger, run the out-of-fold promotion gate, and optionally
hand the challenger to a running server as a shadow.

What triggers a retrain (drift, live performance) is decided above this layer, in
`cli/retrain.py`: training may not import `monitor`. This module retrains, registers, gates
and records; each step is a plain function, and `RetrainSummary` is what a run reports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modalfuse.config import Settings
from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import ModelError
from modalfuse.inference.bundle import ModelBundle
from modalfuse.models.netconfig import NetConfig
from modalfuse.tracking.registry import (
    CHAMPION,
    PromotionDecision,
    log_and_register,
    promote,
    trace,
)
from modalfuse.tracking.runs import TrackedRun
from modalfuse.training.config import TrainConfig
from modalfuse.training.train import train

PARAMS_FILE = "params.yaml"
PIPELINE_FILE = "dvc.yaml"
TRIGGERS = ("drift", "performance", "always")
# The header serve/security.py reads the API key from.
API_KEY_HEADER = "X-API-Key"


class RetrainError(ModelError):
    """A retrain cannot run here: no pipeline, a failed stage, a server that cannot be reached."""


@dataclass
class TriggerDecision:
    """Whether a retrain is due, why, and the numbers the check looked at."""

    trigger: str
    retrain: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrainSummary:
    """What one `modalfuse retrain` did: the decision, the training, the registry, the gate, the shadow."""

    dataset: str
    decision: TriggerDecision
    dry_run: bool = False
    # nothing_to_do, dry_run, unchanged, first_champion, promoted, refused, error
    outcome: str = "nothing_to_do"
    started_at: str = field(default_factory=lambda: utc_stamp())
    finished_at: str | None = None
    data_dir: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=lambda: {"requested": False, "started": False})
    error: str | None = None  # what stopped a run that ended in an error

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)


def utc_stamp() -> str:
    """Now in UTC, to the second (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_summary(summary: RetrainSummary, reports_dir: Path) -> Path:
    """Write the summary as `<reports_dir>/retrain/retrain-<UTC time>.json`; returns the path."""
    summary.finished_at = summary.finished_at or utc_stamp()
    folder = reports_dir / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    path = folder / f"retrain-{stamp}.json"
    path.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    return path


# -- what to train ------------------------------------------------------------------------
def pipeline_params(params_file: Path) -> dict[str, Any]:
    """The DVC pipeline's params.yaml as a dict; empty when the file is not there."""
    import yaml

    if not params_file.is_file():
        return {}
    data = yaml.safe_load(params_file.read_text()) or {}
    if not isinstance(data, dict):
        raise RetrainError(f"{params_file} is not a mapping of parameters")
    return data


def train_config(params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of the pipeline's train stage (`modalfuse train --model --rounds --seed`
    from params.yaml's `train`, the command's defaults for the rest)."""
    t = params.get("train") or {}
    try:
        return TrainConfig(model=str(t.get("model", "gbm")), num_boost_round=int(t.get("rounds", 300)),
                           seed=int(t.get("seed", 42)), net=NetConfig(device="cpu"))
    except (ValueError, TypeError) as e:
        raise RetrainError(f"params.yaml `train` section {t!r} is not a valid training "
                           f"config: {e}") from None


def pipeline_data_dir(repo: Path, params: dict[str, Any]) -> Path:
    """The folder the DVC pipeline writes to (params.yaml `data_dir`, relative to the repo)."""
    return (repo / str(params.get("data_dir", "data"))).resolve()


# -- training -------------------------------------------------------------------------------
def dvc_repro(repo: Path, on_line: Callable[[str], None] | None = None) -> list[str]:
    """Run `dvc repro` in `repo` with this interpreter's bin folder first on PATH (as `make
    pipeline` does); returns the stages that ran. The train stage runs with tracking off:
    the caller registers the bundle, once."""
    if not (repo / PIPELINE_FILE).is_file():
        raise RetrainError(f"no {PIPELINE_FILE} in {repo}: run from the repository (or pass "
                           "--repo), or use --no-dvc to train on the current built dataset")
    bin_dir = Path(sys.executable).parent
    dvc = str(bin_dir / "dvc") if (bin_dir / "dvc").exists() else shutil.which("dvc")
    if dvc is None:
        raise RetrainError("dvc is not installed (pip install 'modalfuse[train]'), or use --no-dvc")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MODALFUSE_TRACKING": "false", "DVC_NO_ANALYTICS": "1"}
    lines: list[str] = []
    with subprocess.Popen([dvc, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            lines.append(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-15:])
        raise RetrainError(f"`dvc repro` failed in {repo} (exit {rc}):\n{tail}")
    return re.findall(r"Running stage '([\w-]+)'", "\n".join(lines))


def train_on_current(ds: Dataset, splits: Splits, models_dir: Path, cfg: TrainConfig) -> ModelBundle:
    """Train `cfg` on the built dataset as the pipeline's train stage does, into a new bundle
    folder `<models_dir>/<dataset>/retrain-<UTC time>`."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return train(ds, splits, models_dir / ds.spec.name / f"retrain-{stamp}", cfg)


def already_registered(settings: Settings, name: str, bundle: ModelBundle) -> str | None:
    """The registered version of `name` that holds this very bundle, or None."""
    for found in trace(settings, bundle.model_version):
        if found["registered_model"] == name:
            return str(found["version"])
    return None


# -- registry and gate ------------------------------------------------------------------------
def register_and_gate(bundle: ModelBundle, ds: Dataset, splits: Splits, settings: Settings,
                      margin: float = 0.01, confidence: float = 0.90,
                      resamples: int = 2000) -> tuple[TrackedRun, PromotionDecision | None]:
    """Log and register the bundle (challenger, or champion when it is the first version), then
    run the out-of-fold gate on it; no gate (None) for a first version."""
    tracked = log_and_register(bundle, ds, splits, settings, run_name=f"retrain-{bundle.model_version}")
    if tracked.alias == CHAMPION:
        return tracked, None
    decision = promote(settings, ds.spec.name, ds, splits, "macro_f1", margin, on="cv",
                       confidence=confidence, resamples=resamples)
    return tracked, decision


def gate_record(decision: PromotionDecision | None) -> dict[str, Any]:
    """What the summary keeps of a gate decision: the verdict, its reason and the interval."""
    if decision is None:
        return {"ran": False, "promoted": True,
                "reason": "first registered version: it is the champion, nothing to compare"}
    return {"ran": True, "promoted": decision.promoted, "reason": decision.reason,
            "on": decision.on, "metric": decision.metric, "margin": decision.margin,
            "interval": decision.interval,
            "champion_version": decision.champion.version if decision.champion else None,
            "challenger_version": decision.challenger.version if decision.challenger else None,
            "plot": decision.plot}


# -- shadow release ----------------------------------------------------------------------------
def start_shadow(url: str, model_uri: str, api_key: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """POST `{url}/admin/shadow {"model_uri": ...}` to a running server; returns its answer.

    Raises RetrainError, with what to check, when the server cannot be reached or says no."""
    if not url.startswith(("http://", "https://")):  # urlopen would open file:// URLs too
        raise RetrainError(f"server URL {url!r} is not an http:// or https:// URL")
    endpoint = url.rstrip("/") + "/admin/shadow"
    request = urllib.request.Request(
        endpoint, data=json.dumps({"model_uri": model_uri}).encode(), method="POST",
        headers={"Content-Type": "application/json", API_KEY_HEADER: api_key})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise RetrainError(f"POST {endpoint} answered HTTP {e.code}: {detail or e.reason}"
                           + (" (check the API key)" if e.code in (401, 403) else "")) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RetrainError(f"cannot reach the server at {url} to start the shadow: {reason}") from None
    try:
        answer = json.loads(body) if body else {}
    except json.JSONDecodeError:
        answer = {"text": body.decode(errors="replace")[:500]}
    return {"status": status, "response": answer}
