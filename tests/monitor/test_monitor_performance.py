"""Live performance from the prediction log: metrics as `classification_metrics` defines
them, windows by prediction time, alerts, feedback rules, migration and retention."""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pytest

from modalfuse.inference.evaluate import classification_metrics
from modalfuse.monitor.performance import (
    PerformanceThresholds,
    live_metrics,
    performance_summary,
)
from modalfuse.monitor.predlog import (
    FeedbackConflict,
    FeedbackLabelError,
    PredictionLog,
)

LABELS = ["Fire", "Grass", "Water"]
HOUR = 3600.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_live_metrics_agree_with_classification_metrics(seed):
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(5), size=80)
    y = rng.integers(0, 4, size=80)  # one class never true, and maybe never predicted
    labels = [f"c{i}" for i in range(5)]
    ours, theirs = live_metrics(proba, y, labels), classification_metrics(proba, y, labels)
    for key in ("accuracy", "macro_f1", "ece"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert set(ours["per_class_recall"]) == {labels[c] for c in set(y.tolist())}


def _log(path, rows):
    """Rows (ts, prediction_id, predicted index) of model "m", as the writer writes them."""
    plog = PredictionLog(path).open()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO models VALUES ('m', ?, '[]')", (json.dumps(LABELS),))
        db.executemany(
            "INSERT INTO predictions (ts, request_id, model_version, latency_ms, label, "
            "confidence, inputs, proba, features, prediction_id) VALUES (?, 'r', 'm', 1.0, ?, "
            "0.8, '{}', ?, ?, ?)",
            [(ts, LABELS[j], np.eye(3, dtype=np.float32)[j].tobytes(), b"", pid)
             for ts, pid, j in rows])
    return plog


def test_windows_by_prediction_time_share_and_alerts(tmp_path):
    t0 = 1_700_000_000 // HOUR * HOUR  # the start of an hour
    rows, feedback = [], []
    # Window 0: 20 predictions, 10 labelled, 9 right. Window 1: 10 labelled, 3 right.
    # Window 2: 3 labelled, all wrong, too few to judge.
    for w, (n, labelled, right) in enumerate([(20, 10, 9), (10, 10, 3), (3, 3, 0)]):
        for i in range(n):
            pid = f"{w:02d}{i:030x}"
            rows.append((t0 + w * HOUR + i, pid, 0))
            if i < labelled:
                feedback.append((pid, "Fire" if i < right else "Water"))
    plog = _log(tmp_path / "predictions.db", rows)
    outcomes = plog.add_feedback(feedback, now=t0 + 5 * 86400)  # labels days later: accepted
    assert {o.status for o in outcomes} == {"stored"}
    t = PerformanceThresholds(window_s=HOUR, min_labels=5, min_accuracy=0.5, min_macro_f1=0.0,
                              max_ece=1.0)
    s = performance_summary(plog, t)
    windows = s["models"]["m"]["windows"]
    assert [(w["predictions"], w["labelled"]) for w in windows] == [(20, 10), (10, 10), (3, 3)]
    assert [w["labelled_share"] for w in windows] == [0.5, 1.0, 1.0]
    assert [w["accuracy"] for w in windows] == pytest.approx([0.9, 0.3, 0.0])
    assert [bool(w["alerts"]) for w in windows] == [False, True, False]
    assert s["status"] == "alert" and len(s["alerts"]) == 1
    assert "accuracy 0.300 is below 0.5" in s["alerts"][0]["message"]
    assert windows[1]["per_class_recall"] == {"Fire": {"recall": 1.0, "support": 3},
                                              "Water": {"recall": 0.0, "support": 7}}
    assert s["models"]["m"]["latest"] == windows[-1]
    # One window only, and a time range that leaves out the bad one.
    assert performance_summary(plog, t, since=t0 + 2 * HOUR)["status"] == "ok"
    assert performance_summary(plog, t, model_version="other")["status"] == "no_feedback"


def test_feedback_rules(tmp_path):
    plog = _log(tmp_path / "predictions.db", [(time.time(), "a" * 32, 0), (time.time(), "b" * 32, 1)])
    with pytest.raises(FeedbackLabelError) as bad:
        plog.add_feedback([("a" * 32, "Fire"), ("b" * 32, "fire")])
    assert list(bad.value.errors) == [1] and "Fire, Grass, Water" in bad.value.errors[1]
    assert plog.add_feedback([("a" * 32, "Fire")])[0].status == "stored"  # nothing before
    # The same id twice in one request: the later row sees the earlier one.
    out = plog.add_feedback([("b" * 32, "Grass"), ("b" * 32, "Grass"), ("c" * 32, "Fire")])
    assert [o.status for o in out] == ["stored", "unchanged", "unknown"]
    with pytest.raises(FeedbackConflict) as conflict:
        plog.add_feedback([("b" * 32, "Water")])
    assert "'Grass'" in conflict.value.errors[0] and "'Water'" in conflict.value.errors[0]
    out = plog.add_feedback([("b" * 32, "Water")], replace=True)
    assert (out[0].status, out[0].previous_label) == ("replaced", "Grass")
    assert len(plog.read_labelled()) == 2


def test_an_old_log_file_gains_the_id_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "predictions.db"
    with sqlite3.connect(path) as db:  # the layout before prediction ids
        db.executescript("""
            CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
                request_id TEXT, model_version TEXT NOT NULL, latency_ms REAL NOT NULL,
                label TEXT NOT NULL, confidence REAL NOT NULL, inputs TEXT NOT NULL,
                proba BLOB NOT NULL, features BLOB NOT NULL);
            CREATE TABLE models (model_version TEXT PRIMARY KEY, labels TEXT NOT NULL,
                feature_names TEXT NOT NULL);
            INSERT INTO predictions (ts, model_version, latency_ms, label, confidence, inputs,
                proba, features) VALUES (1.0, 'm', 1.0, 'Fire', 0.9, '{}', x'00', x'00');
        """)
    plog = PredictionLog(path).open()
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(predictions)")]
        indexes = {r[1] for r in db.execute("PRAGMA index_list(predictions)")}
    assert columns[-2:] == ["prediction_id", "flags"] and "predictions_pid" in indexes
    assert len(plog.read()) == 1 and plog.read().frame["prediction_id"].isna().all()
    assert plog.add_feedback([("a" * 32, "Fire")])[0].status == "unknown"


def test_pruned_predictions_take_their_feedback_with_them(tmp_path):
    now = time.time()
    plog = _log(tmp_path / "predictions.db", [(now - 40 * 86400, "a" * 32, 0), (now, "b" * 32, 0)])
    plog.add_feedback([("a" * 32, "Fire"), ("b" * 32, "Fire")])
    plog.retention.max_age_s = 30 * 86400
    assert plog.prune().deleted_old == 1
    assert plog.read_labelled().frame["prediction_id"].tolist() == ["b" * 32]
    with sqlite3.connect(plog.path) as db:
        assert db.execute("SELECT prediction_id FROM feedback").fetchall() == [("b" * 32,)]
