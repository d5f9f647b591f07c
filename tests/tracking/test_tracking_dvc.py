"""The DVC pipeline (dvc.yaml) run by `dvc repro` on the fixture dataset, in a scratch repo.

The repo's own dvc.yaml is used as is; params choose the fixture as the data source
(fetch copies its exported files, build is `modalfuse data import`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


@pytest.fixture(scope="module")
def pipeline_repo(fixture_dataset, tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("dvc-repo")
    src = d / "fixture_src"
    (src / "images").mkdir(parents=True)
    ds = fixture_dataset
    ds.table.to_parquet(src / "table.parquet", index=False)
    for name in ds.table[ds.spec.image_column]:
        shutil.copy(ds.image_path(name), src / "images" / name)
    ds.spec.save(src / "spec.json")
    (d / "code").mkdir()
    (d / "code" / "model.txt").write_text("stands in for src/modalfuse\n")
    shutil.copy(REPO / "dvc.yaml", d / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update({
        "code": "code",
        "dataset": {
            "name": "pokemon", "source": "fixture_src",
            "fetch": "mkdir -p data/build/cache && cp -R fixture_src/. data/build/cache/",
            "build": ("modalfuse data import --table data/build/cache/table.parquet "
                      "--images data/build/cache/images --name pokemon --target primary_type "
                      "--group-column family_id --spec data/build/cache/spec.json"),
        },
        "split": {"seed": 0, "test_size": 0.2, "folds": 2},
        "train": {"model": "gbm", "rounds": 5, "seed": 0},
    })
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MODALFUSE_TRACKING": "false",  # the registry tests cover tracking; keep this fast
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MODALFUSE_DATA_DIR", None)
    run(["git", "init", "-q"], d, env)
    run([str(BIN / "dvc"), "init", "-q"], d, env)
    run([str(BIN / "dvc"), "config", "core.autostage", "false"], d, env)
    return d, env


@pytest.mark.slow  # `dvc repro` three times: over 20 s on 2 cores
def test_dvc_repro_runs_all_then_nothing_then_only_dependents(pipeline_repo):
    from modalfuse.data.dataset import load_dataset
    from modalfuse.tracking.runs import data_versions

    d, env = pipeline_repo
    dvc = str(BIN / "dvc")
    first = run([dvc, "repro"], d, env)
    assert ran_stages(first) == ["fetch", "build", "split", "train", "evaluate"], first
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.3
    lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
    assert lock["train"]["params"]["params.yaml"]["train"] == {"model": "gbm", "rounds": 5,
                                                               "seed": 0}

    # An unchanged tree: nothing runs.
    again = run([dvc, "repro"], d, env)
    assert ran_stages(again) == [], again
    assert "up to date" in run([dvc, "status"], d, env)

    # A training param changes: only train and what depends on it rerun.
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["train"]["rounds"] = 8
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([dvc, "repro"], d, env)
    assert ran_stages(changed) == ["train", "evaluate"], changed

    # DVC's version of the frozen dataset and the dataset's own content hash agree: the
    # files DVC tracks are exactly the content the manifest names, and the lock's md5 is
    # the DVC data version that training runs record next to it.
    ds = load_dataset(d / "data" / "datasets" / "pokemon")
    v = data_versions(ds)
    assert v["agree"] and v["content_version"] == ds.version
    assert v["dvc"]["stage"] == "split"
    assert v["dvc"]["md5"] == lock["split"]["outs"][0]["md5"]
    out = run([str(BIN / "modalfuse"), "data-version"], d,
              {**env, "MODALFUSE_DATA_DIR": str(d / "data")})
    assert "agree" in out and ds.version in out
