"""`modalfuse retrain` end to end on the fixture dataset, in a data folder of its own with an
embedded registry whose champion is a deliberately weak model.

`--if drift` with no logged predictions does nothing; `--dry-run` changes nothing; `--if
always --no-dvc` trains params.yaml's model, registers it as version 2, runs the out-of-fold
gate and records its decision (with the interval) in the summary JSON; the shadow request
reaches a server with the key in its header, and an unreachable server is a clear error.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from modalfuse.config import Settings
from modalfuse.errors import InvalidInput

KEEP = {"height_m", "weight_kg"}  # the weak champion sees two fields, no image


@pytest.fixture(scope="module")
def store(fixture_dataset, fixture_splits, tmp_path_factory):
    from modalfuse.tracking.registry import log_and_register
    from modalfuse.training.train import TrainConfig, train

    d = tmp_path_factory.mktemp("retrain")
    data = d / "data"
    (data / "datasets").mkdir(parents=True)
    (data / "datasets" / "pokemon").symlink_to(fixture_dataset.root)
    weak = train(fixture_dataset, fixture_splits, d / "weak", TrainConfig(
        exclude_fields=[f.name for f in fixture_dataset.spec.fields if f.name not in KEEP],
        use_image_stats=False, num_boost_round=5, seed=0))
    params = d / "params.yaml"
    params.write_text(yaml.safe_dump({"data_dir": "data", "train": {"model": "gbm", "rounds": 20,
                                                                     "seed": 0}}))
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MODALFUSE_BUNDLE", "MODALFUSE_MODEL_URI"):
            mp.delenv(var, raising=False)
        mp.setenv("MODALFUSE_DATA_DIR", str(data))
        s = Settings()
        assert log_and_register(weak, fixture_dataset, fixture_splits, s).alias == "champion"
        yield {"settings": s, "data": data, "params": params}


def invoke(*args: str):
    from modalfuse.cli import app

    return CliRunner().invoke(app, ["retrain", *args], terminal_width=200)


def versions(s: Settings) -> list[str]:
    from modalfuse.tracking.runs import get_client

    return sorted(str(m.version) for m in get_client(s).search_model_versions("name='pokemon'"))


def summaries(data: Path) -> list[Path]:
    return sorted((data / "reports" / "retrain").glob("retrain-*.json"))


def test_drift_without_logged_predictions_is_nothing_to_do(store):
    res = invoke("--if", "drift", "--no-dvc", "--params", str(store["params"]))
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "no retrain" in out and "no logged predictions" in out, out
    assert versions(store["settings"]) == ["1"]
    summary = json.loads(summaries(store["data"])[-1].read_text())
    assert summary["outcome"] == "nothing_to_do"
    assert summary["decision"] == {**summary["decision"], "trigger": "drift", "retrain": False}


def test_run_retrain_is_a_function_that_returns_its_summary(store):
    from modalfuse.ops.retrain import RetrainOptions, run_retrain

    summary = run_retrain(store["settings"], RetrainOptions(trigger="drift", dvc=False,
                                                            params=store["params"], dry_run=True))
    assert summary.outcome == "nothing_to_do" and summary.dry_run
    assert not summary.decision.retrain and "no logged predictions" in summary.decision.reason
    with pytest.raises(InvalidInput, match="unknown trigger 'sometimes'"):
        RetrainOptions(trigger="sometimes")


def test_the_cli_triggers_are_the_library_ones():
    from modalfuse.cli.retrain import Trigger
    from modalfuse.ops.triggers import TRIGGERS

    assert tuple(t.value for t in Trigger) == TRIGGERS


def test_a_dataset_other_than_the_pipelines_is_a_usage_error(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"name": "fruit"}}))
    res = invoke("--if", "always", "--repo", str(tmp_path))
    assert res.exit_code == 2, res.output
    assert "builds dataset 'fruit', not 'pokemon'" in " ".join(res.output.split())


def test_performance_without_feedback_is_nothing_to_do(store):
    res = invoke("--if", "performance", "--no-dvc", "--params", str(store["params"]))
    assert res.exit_code == 0, res.output
    assert "no labelled predictions" in " ".join(res.output.split()), res.output
    assert versions(store["settings"]) == ["1"]


def test_dry_run_changes_nothing(store):
    before = summaries(store["data"])
    res = invoke("--if", "always", "--no-dvc", "--dry-run", "--params", str(store["params"]))
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output and "nothing written" in res.output
    assert versions(store["settings"]) == ["1"]
    assert summaries(store["data"]) == before
    assert not list((store["data"] / "models").glob("pokemon/retrain-*"))


def test_always_registers_a_challenger_and_runs_the_gate(store):
    from modalfuse.tracking.registry import CHAMPION, alias_version
    from modalfuse.tracking.runs import get_client

    s = store["settings"]
    res = invoke("--if", "always", "--no-dvc", "--params", str(store["params"]),
                 "--resamples", "300")
    assert res.exit_code == 0, res.output
    assert versions(s) == ["1", "2"]
    summary = json.loads(summaries(store["data"])[-1].read_text())
    assert summary["decision"]["retrain"] and summary["training"]["via"] == "functions"
    assert summary["training"]["config"] == {"model": "gbm", "rounds": 20, "seed": 0}
    assert Path(summary["training"]["bundle"]).parent == store["data"] / "models" / "pokemon"
    assert summary["registry"] == {**summary["registry"], "version": "2", "new": True,
                                   "alias": "challenger", "model_uri": "models:/pokemon/2"}
    gate = summary["gate"]
    assert gate["ran"] and gate["on"] == "cv" and gate["champion_version"] == "1"
    assert set(gate["interval"]) >= {"gain", "low", "high", "confidence", "rows"}
    assert summary["outcome"] == ("promoted" if gate["promoted"] else "refused")
    # The registry agrees with what the summary says the gate decided.
    champion = alias_version(get_client(s), "pokemon", CHAMPION)
    assert str(champion.version) == ("2" if gate["promoted"] else "1")
    tag = get_client(s).get_model_version("pokemon", "2").tags["modalfuse.promotion"]
    assert tag.startswith("promoted" if gate["promoted"] else "refused")
    assert "interval" in " ".join(res.output.split())


def test_the_same_bundle_again_is_not_registered_twice(store):
    res = invoke("--if", "always", "--no-dvc", "--params", str(store["params"]))
    assert res.exit_code == 0, res.output
    assert versions(store["settings"]) == ["1", "2"]
    summary = json.loads(summaries(store["data"])[-1].read_text())
    assert summary["outcome"] == "unchanged" and summary["registry"]["version"] == "2"


def test_a_refused_challenger_is_started_as_a_shadow(store, tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"model": "gbm", "rounds": 20, "seed": 1}}))
    monkeypatch.setenv("RETRAIN_TEST_KEY", "k" * 20)
    _ShadowHandler.seen = []
    server = HTTPServer(("127.0.0.1", 0), _ShadowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = invoke("--if", "always", "--no-dvc", "--params", str(params), "--resamples", "300",
                     "--shadow-url", f"http://127.0.0.1:{server.server_address[1]}",
                     "--api-key-env", "RETRAIN_TEST_KEY")
    finally:
        server.shutdown()
        server.server_close()
    assert res.exit_code == 0, res.output
    summary = json.loads(summaries(store["data"])[-1].read_text())
    # As good as the champion on the folds (both perfect on this fixture): no gain, refused.
    assert summary["outcome"] == "refused", summary["gate"]
    assert "below the margin" in summary["gate"]["reason"]
    assert summary["shadow"] == {**summary["shadow"], "requested": True, "started": True,
                                 "model_uri": "models:/pokemon/3", "status": 200}
    assert _ShadowHandler.seen == [{"path": "/admin/shadow", "key": "k" * 20,
                                    "body": {"model_uri": "models:/pokemon/3"}}]


class _ShadowHandler(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []  # the requests it answered

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "key": self.headers["X-API-Key"], "body": body})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"shadow": "started"}')

    def log_message(self, *args):
        pass


def test_start_shadow_posts_the_uri_with_the_key_and_reports_an_unreachable_server():
    from modalfuse.ops.retrain import RetrainError, start_shadow

    _ShadowHandler.seen = []
    server = HTTPServer(("127.0.0.1", 0), _ShadowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        answer = start_shadow(url + "/", "models:/pokemon/2", "k" * 20)
    finally:
        server.shutdown()
        server.server_close()
    assert answer == {"status": 200, "response": {"shadow": "started"}}
    assert _ShadowHandler.seen == [{"path": "/admin/shadow", "key": "k" * 20,
                                    "body": {"model_uri": "models:/pokemon/2"}}]
    with pytest.raises(RetrainError, match="cannot reach the server at"):
        start_shadow(url, "models:/pokemon/2", "k" * 20, timeout_s=2)
    with pytest.raises(RetrainError, match="not an http"):
        start_shadow("file:///etc/passwd", "models:/pokemon/2", "k")


@pytest.mark.slow  # `dvc repro` of the whole pipeline: 19 s under -n 2 on 2 cores
def test_dvc_retrain_runs_the_pipeline_then_registers_its_bundle(fixture_dataset, tmp_path,
                                                                  monkeypatch):
    """`dvc repro` in a scratch repo (the repo's dvc.yaml, the fixture as source, as in
    tests/tracking/test_tracking_dvc.py): the pipeline's bundle becomes version 1, champion."""
    import shutil
    import subprocess
    import sys

    from modalfuse.tracking.runs import get_client

    repo_root = Path(__file__).resolve().parents[2]
    src = tmp_path / "fixture_src"
    (src / "images").mkdir(parents=True)
    ds = fixture_dataset
    ds.table.to_parquet(src / "table.parquet", index=False)
    for name in ds.table[ds.spec.image_column]:
        shutil.copy(ds.image_path(name), src / "images" / name)
    ds.spec.save(src / "spec.json")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "model.txt").write_text("stands in for src/modalfuse\n")
    shutil.copy(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params.update({
        "code": "code",
        "dataset": {"name": "pokemon", "source": "fixture_src",
                    "fetch": "mkdir -p data/build/cache && cp -R fixture_src/. data/build/cache/",
                    "build": ("modalfuse data import --table data/build/cache/table.parquet "
                              "--images data/build/cache/images --name pokemon --target "
                              "primary_type --group-column family_id --spec "
                              "data/build/cache/spec.json")},
        "split": {"seed": 0, "test_size": 0.2, "folds": 2},
        "train": {"model": "gbm", "rounds": 5, "seed": 0},
    })
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"],
                [dvc, "config", "core.autostage", "false"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    for var in ("MLFLOW_TRACKING_URI", "MODALFUSE_BUNDLE", "MODALFUSE_MODEL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")

    res = invoke("--if", "always", "--repo", str(tmp_path))
    assert res.exit_code == 0, res.output
    data = tmp_path / "data"
    summary = json.loads(summaries(data)[-1].read_text())
    assert summary["training"]["via"] == "dvc"
    assert summary["training"]["stages"] == ["fetch", "build", "split", "train", "evaluate"]
    assert summary["training"]["bundle"] == str(data / "models" / "pokemon")
    assert summary["outcome"] == "first_champion" and summary["registry"]["version"] == "1"
    s = Settings(data_dir=data)
    assert [str(m.version) for m in get_client(s).search_model_versions("name='pokemon'")] == ["1"]


def test_a_failed_retrain_exits_1_and_still_writes_its_summary(store, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"model": "nope", "rounds": 5, "seed": 0}}))
    before = set(summaries(store["data"]))
    res = invoke("--if", "always", "--no-dvc", "--params", str(params))
    assert res.exit_code == 1, res.output
    assert "unknown model 'nope'" in res.output
    (new,) = set(summaries(store["data"])) - before
    saved = json.loads(new.read_text())
    assert saved["outcome"] == "error" and "unknown model 'nope'" in saved["error"]
