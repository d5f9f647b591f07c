"""The DVC pipeline's training, callable from code: its params.yaml, `dvc repro`, and its train
stage as a function on the current built dataset.

This is the training half of a retrain. Deciding when to retrain (monitoring), registering the
bundle and running the gate (tracking) combine layers above this one: `modalfuse.ops.retrain`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import ModelError
from modalfuse.inference.bundle import ModelBundle
from modalfuse.models.netconfig import NetConfig
from modalfuse.training.config import TrainConfig
from modalfuse.training.train import train

PARAMS_FILE = "params.yaml"
PIPELINE_FILE = "dvc.yaml"


class PipelineError(ModelError):
    """The pipeline cannot run here (no dvc.yaml, no dvc, a failed stage) or its params.yaml
    does not make a training config."""


def pipeline_params(params_file: Path) -> dict[str, Any]:
    """The DVC pipeline's params.yaml as a dict; empty when the file is not there."""
    import yaml

    if not params_file.is_file():
        return {}
    data = yaml.safe_load(params_file.read_text()) or {}
    if not isinstance(data, dict):
        raise PipelineError(f"{params_file} is not a mapping of parameters")
    return data


def train_config(params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of the pipeline's train stage (`modalfuse train --model --rounds --seed`
    from params.yaml's `train`, the command's defaults for the rest)."""
    t = params.get("train") or {}
    try:
        return TrainConfig(model=str(t.get("model", "gbm")), num_boost_round=int(t.get("rounds", 300)),
                           seed=int(t.get("seed", 42)), net=NetConfig(device="cpu"))
    except (ValueError, TypeError) as e:
        raise PipelineError(f"params.yaml `train` section {t!r} is not a valid training "
                            f"config: {e}") from None


def pipeline_data_dir(repo: Path, params: dict[str, Any]) -> Path:
    """The folder the DVC pipeline writes to (params.yaml `data_dir`, relative to the repo)."""
    return (repo / str(params.get("data_dir", "data"))).resolve()


def dvc_repro(repo: Path, on_line: Callable[[str], None] | None = None) -> list[str]:
    """Run `dvc repro` in `repo` with this interpreter's bin folder first on PATH (as `make
    pipeline` does); returns the stages that ran. The train stage runs with tracking off:
    the caller registers the bundle, once."""
    if not (repo / PIPELINE_FILE).is_file():
        raise PipelineError(f"no {PIPELINE_FILE} in {repo}: run from the repository (or pass "
                            "--repo), or use --no-dvc to train on the current built dataset")
    bin_dir = Path(sys.executable).parent
    dvc = str(bin_dir / "dvc") if (bin_dir / "dvc").exists() else shutil.which("dvc")
    if dvc is None:
        raise PipelineError("dvc is not installed (pip install 'modalfuse[train]'), or use --no-dvc")
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
        raise PipelineError(f"`dvc repro` failed in {repo} (exit {rc}):\n{tail}")
    return re.findall(r"Running stage '([\w-]+)'", "\n".join(lines))


def train_on_current(ds: Dataset, splits: Splits, models_dir: Path, cfg: TrainConfig) -> ModelBundle:
    """Train `cfg` on the built dataset as the pipeline's train stage does, into a new bundle
    folder `<models_dir>/<dataset>/retrain-<UTC time>`."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return train(ds, splits, models_dir / ds.spec.name / f"retrain-{stamp}", cfg)
