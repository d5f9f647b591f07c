"""The shadow log: what a shadow challenger answered for each request the champion answered.

Rows live in the `shadow` table of the prediction-log file (`<data dir>/monitoring/
predictions.db`), beside the `predictions` table and, once clients send labels, the `feedback`
table, so one query joins the champion's answer, the challenger's and the truth by
`prediction_id`. Work the shadow could not keep up with is counted in `shadow_drops`.

`shadow_report` reads it back: agreement overall and per (champion, challenger) pair, the
drops, and both models' accuracy on the rows that have feedback.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalfuse.markdown import markdown_table
from modalfuse.sqlite import open_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    prediction_id TEXT,
    champion_version TEXT NOT NULL,
    challenger_version TEXT NOT NULL,
    champion_label TEXT NOT NULL,
    challenger_label TEXT NOT NULL,
    challenger_proba BLOB NOT NULL,
    agree INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_ts ON shadow (ts);
CREATE INDEX IF NOT EXISTS shadow_prediction_id ON shadow (prediction_id);
CREATE TABLE IF NOT EXISTS shadow_models (
    model_version TEXT PRIMARY KEY,
    labels TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_drops (
    ts REAL NOT NULL,
    champion_version TEXT NOT NULL,
    challenger_version TEXT NOT NULL,
    rows INTEGER NOT NULL
);
"""


def prediction_db(data_dir: Path) -> Path:
    """The prediction-log file of a data folder, which holds the shadow tables too."""
    return Path(data_dir) / "monitoring" / "predictions.db"


@dataclass(frozen=True)
class ShadowRow:
    """One row scored in the shadow: both models' labels and the challenger's probabilities
    (float32, in the order of its labels)."""

    ts: float
    prediction_id: str | None
    champion_version: str
    challenger_version: str
    champion_label: str
    challenger_label: str
    challenger_proba: bytes

    @property
    def agree(self) -> bool:
        """Whether both models predicted the same label."""
        return self.champion_label == self.challenger_label


class ShadowLog:
    """Writes shadow rows and drop counts to the prediction-log file; `max_age_s` prunes
    rows older than that on each write (at most once a minute)."""

    def __init__(self, path: Path, max_age_s: float | None = None, prune_every_s: float = 60.0):
        self.path = Path(path)
        self.max_age_s, self.prune_every_s = max_age_s, prune_every_s
        self._next_prune = 0.0
        self._known_models: set[str] = set()

    def connect(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection to the log file in WAL mode (as the prediction log opens it), closed
        on exit."""
        # Incremental auto-vacuum as the prediction log makes the file.
        return open_sqlite(self.path, auto_vacuum="INCREMENTAL", synchronous="NORMAL")

    def open(self) -> ShadowLog:
        """Create the file's folder and the shadow tables if needed; returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.executescript(SCHEMA)
        return self

    def write(self, rows: Sequence[ShadowRow], labels: dict[str, list[str]]) -> None:
        """Insert scored rows; `labels` maps a challenger version to its label order."""
        with self.connect() as db:
            for version, names in labels.items():
                if version not in self._known_models:
                    db.execute("INSERT OR IGNORE INTO shadow_models VALUES (?, ?)",
                               (version, json.dumps(names)))
                    self._known_models.add(version)
            db.executemany(
                "INSERT INTO shadow (ts, prediction_id, champion_version, challenger_version, "
                "champion_label, challenger_label, challenger_proba, agree) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.ts, r.prediction_id, r.champion_version, r.challenger_version,
                  r.champion_label, r.challenger_label, r.challenger_proba, int(r.agree))
                 for r in rows])
            db.commit()
            self._prune_if_due(db)

    def record_drops(self, champion_version: str, challenger_version: str, rows: int) -> None:
        """Count `rows` the shadow dropped because its queue was full."""
        with self.connect() as db:
            db.execute("INSERT INTO shadow_drops VALUES (?, ?, ?, ?)",
                       (time.time(), champion_version, challenger_version, int(rows)))
            db.commit()

    def _prune_if_due(self, db: sqlite3.Connection) -> None:
        if self.max_age_s is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.prune_every_s
        cutoff = time.time() - self.max_age_s
        db.execute("DELETE FROM shadow WHERE ts < ?", (cutoff,))
        db.execute("DELETE FROM shadow_drops WHERE ts < ?", (cutoff,))
        db.commit()


# -- the report ----------------------------------------------------------------------------
def _feedback_labels(db: sqlite3.Connection) -> dict[str, str] | None:
    """The latest feedback label per prediction id, or None without a usable feedback table."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(feedback)")}
    if not {"prediction_id", "label"} <= columns:
        return None
    try:
        rows = db.execute("SELECT prediction_id, label FROM feedback WHERE rowid IN "
                          "(SELECT MAX(rowid) FROM feedback GROUP BY prediction_id)").fetchall()
    except sqlite3.Error:  # e.g. a WITHOUT ROWID table: any label per id will do
        rows = db.execute("SELECT prediction_id, label FROM feedback").fetchall()
    return {str(pid): str(label) for pid, label in rows if pid is not None and label is not None}


def _summary(rows: list[tuple], truth: dict[str, str] | None, dropped: int) -> dict[str, Any]:
    """Counts, agreement and (with feedback) both accuracies of shadow rows
    (prediction_id, champion_label, challenger_label, agree, ts)."""
    n = len(rows)
    agree = sum(r[3] for r in rows)
    out: dict[str, Any] = {
        "rows": n, "agree": agree, "agreement": agree / n if n else None, "dropped": dropped,
        "first_ts": min((r[4] for r in rows), default=None),
        "last_ts": max((r[4] for r in rows), default=None),
        "labelled": 0, "champion_accuracy": None, "challenger_accuracy": None,
    }
    if truth:
        labelled = [(truth[r[0]], r[1], r[2]) for r in rows if r[0] is not None and r[0] in truth]
        if labelled:
            out["labelled"] = len(labelled)
            out["champion_accuracy"] = sum(t == c for t, c, _ in labelled) / len(labelled)
            out["challenger_accuracy"] = sum(t == h for t, _, h in labelled) / len(labelled)
    return out


def shadow_report(data_dir: Path, since: float | None = None) -> dict[str, Any]:
    """Agreement of the shadow challengers with the champion, overall and per (champion,
    challenger) version pair, rows dropped, and both models' accuracy where feedback labels
    exist; `since` is a Unix time (rows before it are left out)."""
    path = prediction_db(data_dir)
    report: dict[str, Any] = {"path": str(path), "since": since, "feedback": False,
                              "overall": _summary([], None, 0), "pairs": []}
    if not path.exists():
        return report
    log = ShadowLog(path)
    with log.connect() as db:
        db.executescript(SCHEMA)
        t0 = since if since is not None else float("-inf")
        rows = db.execute("SELECT champion_version, challenger_version, prediction_id, "
                          "champion_label, challenger_label, agree, ts FROM shadow "
                          "WHERE ts >= ? ORDER BY id", (t0,)).fetchall()
        drops = db.execute("SELECT champion_version, challenger_version, SUM(rows) FROM "
                           "shadow_drops WHERE ts >= ? GROUP BY 1, 2", (t0,)).fetchall()
        truth = _feedback_labels(db)
    by_pair: dict[tuple[str, str], list[tuple]] = {}
    for champion, challenger, *rest in rows:
        by_pair.setdefault((champion, challenger), []).append(tuple(rest))
    dropped = {(a, b): int(n or 0) for a, b, n in drops}
    pairs = sorted(set(by_pair) | set(dropped))
    report["feedback"] = truth is not None
    report["overall"] = _summary([r for p in pairs for r in by_pair.get(p, [])], truth,
                                 sum(dropped.values()))
    report["pairs"] = [{"champion_version": a, "challenger_version": b,
                        **_summary(by_pair.get((a, b), []), truth, dropped.get((a, b), 0))}
                       for a, b in pairs]
    return report


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f} %"


def shadow_markdown(report: dict[str, Any]) -> str:
    """The shadow report as Markdown: one line overall, then a table per version pair."""
    o = report["overall"]
    lines = [f"Shadow report of `{report['path']}`"
             + (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(report['since']))} UTC"
                if report.get("since") else "") + ".", "",
             f"Overall: {o['rows']} rows scored in the shadow, agreement {_fmt(o['agreement'])}, "
             f"{o['dropped']} dropped (queue full)."]
    if not report["feedback"]:
        lines.append("No feedback table: accuracies need labels sent to /v1/feedback.")
    elif o["labelled"]:
        lines.append(f"On {o['labelled']} rows with feedback: champion accuracy "
                     f"{_fmt(o['champion_accuracy'])}, challenger {_fmt(o['challenger_accuracy'])}.")
    else:
        lines.append("No shadow row has feedback yet.")
    if report["pairs"]:
        lines += ["", markdown_table(
            ["champion", "challenger", "rows", "agreement", "dropped", "labelled", "champion acc",
             "challenger acc"],
            [[p["champion_version"], p["challenger_version"], p["rows"], _fmt(p["agreement"]),
              p["dropped"], p["labelled"], _fmt(p["champion_accuracy"]),
              _fmt(p["challenger_accuracy"])] for p in report["pairs"]])]
    return "\n".join(lines) + "\n"
