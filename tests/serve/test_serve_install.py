"""The serving install: a fresh venv with only the `serve` lock (no torch) scores a fused bundle."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # builds a venv and pip-installs the serve lock into it

REPO = Path(__file__).resolve().parents[2]
TINY = {"image_size": 16, "width": 4, "embed_dim": 8, "epochs": 1, "batch_size": 32,
        "views_per_epoch": 1}

SCRIPT = textwrap.dedent("""
    import base64, importlib.util, json, sys, tempfile
    for lib in ("torch", "lightgbm", "scipy", "sklearn", "gradio", "mlflow", "pyarrow"):
        assert importlib.util.find_spec(lib) is None, f"{lib} is importable in the serve venv"
    from modalfuse.config import Settings
    from modalfuse.inference.predictor import Predictor
    from modalfuse.serve.app import create_app
    req = json.load(open(sys.argv[2]))
    pred = Predictor.from_path(sys.argv[1])
    images = [base64.b64decode(b) for b in req["images"]]
    out = pred.predict(req["records"], images)
    proba = pred.predict_proba(req["records"], images).tolist()
    # The API builds from the lean install too, without its UI.
    app = create_app(Settings(data_dir=tempfile.mkdtemp()), predictor=pred)
    paths = sorted(app.openapi()["paths"]) + [getattr(r, "path", "") for r in app.routes]
    print(json.dumps({"out": out, "proba": proba, "version": pred.model_version,
                      "torch": "torch" in sys.modules, "paths": paths}))
""")


def test_serve_extra_scores_a_fused_bundle_without_torch(fixture_dataset, fixture_splits,
                                                         tmp_path):
    from modalfuse.inference.predictor import Predictor, table_records
    from modalfuse.training.train import TrainConfig, train

    bundle = train(fixture_dataset, fixture_splits, tmp_path / "stacking",
                   TrainConfig(model="stacking", seed=1, num_boost_round=15, cv=False, net=TINY),
                   evaluate_test=False)
    rows = fixture_dataset.table.set_index("id").loc[fixture_splits.ids("test")[:3]].reset_index()
    records = table_records(fixture_dataset.spec, rows)
    images = fixture_dataset.row_images(rows)
    req = tmp_path / "request.json"
    req.write_text(json.dumps({"records": records,
                               "images": [base64.b64encode(b).decode() for b in images]},
                              default=str))

    venv = tmp_path / "serve-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # As the serve image installs: its lock with every hash, then modalfuse without dependencies.
    for args in (["--require-hashes", "--no-deps", "-r", str(REPO / "requirements" / "serve.txt")],
                 ["--no-deps", "--no-build-isolation", str(REPO)]):
        install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", *args],
                                 capture_output=True, text=True, timeout=1200)
        assert install.returncode == 0, install.stderr[-3000:]
    (tmp_path / "score.py").write_text(SCRIPT)
    run = subprocess.run([str(py), str(tmp_path / "score.py"), str(bundle.path), str(req)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert "/v1/predict" in got["paths"] and not any(p.startswith("/ui") for p in got["paths"])
    assert got["version"] == bundle.model_version
    assert all(o["label"] in bundle.labels for o in got["out"])
    # the slim install gives the same probabilities as the training install
    want = Predictor(bundle).predict_proba(records, images)
    np.testing.assert_allclose(np.array(got["proba"]), want, atol=1e-6)
