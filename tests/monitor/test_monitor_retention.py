"""Monitoring tier: the prediction log's file shared by predictions, feedback and the shadow —
size retention cuts every table in step, and the writer survives what SQLite does to its files."""

from __future__ import annotations

import os
import time

import numpy as np

from modalfuse.monitor.predlog import PredictionLog
from modalfuse.monitor.shadowlog import ShadowLog, ShadowRow


def test_size_retention_cuts_shadow_rows_too_and_keeps_predictions(tmp_path):
    path = tmp_path / "predictions.db"
    plog = PredictionLog(path, max_bytes=2_000_000).open()
    slog = ShadowLog(path).open()
    now = time.time()
    slog.write([ShadowRow(now, os.urandom(16).hex(), "a", "b", "x", "y",
                          np.zeros(18, np.float32).tobytes()) for _ in range(14_000)], {"b": ["x"]})
    with plog.connect() as db:
        db.executemany(
            "INSERT INTO predictions (ts, model_version, latency_ms, label, confidence, inputs, "
            "proba, features, prediction_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(now, "a", 1.0, "x", 0.5, '{"a": 1}', b"\0" * 72, b"\0" * 400, os.urandom(16).hex())
             for _ in range(1_000)])
        db.execute("INSERT INTO feedback SELECT prediction_id, 'x', 0 FROM predictions")
        db.commit()
    assert plog.size_bytes() > 2_000_000
    result = plog.prune()
    with plog.connect() as db:
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("predictions", "feedback", "shadow")}
    assert result.size_bytes <= 2_000_000
    # Both tables gave up about the same share; the shadow did not push predictions out.
    assert 0 < counts["predictions"] < 1_000 and 0 < counts["shadow"] < 14_000
    assert abs(counts["predictions"] / 1_000 - counts["shadow"] / 14_000) < 0.05
    assert counts["feedback"] == counts["predictions"]  # a prediction's feedback goes with it


def test_size_counts_a_missing_write_ahead_log_as_empty(tmp_path):
    plog = PredictionLog(tmp_path / "predictions.db", max_bytes=1_000_000).open()
    wal = tmp_path / "predictions.db-wal"
    wal.unlink(missing_ok=True)  # what SQLite does when the last connection closes
    assert plog.size_bytes() == (tmp_path / "predictions.db").stat().st_size
    assert PredictionLog(tmp_path / "absent.db").size_bytes() == 0
