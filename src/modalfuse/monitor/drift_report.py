"""`modalfuse monitor`: an Evidently drift report and a skew check of the logged predictions.

Data drift and prediction drift run in Evidently (0.7 API) on the raw fields and the
predicted label, serving rows against the model's training rows. The skew check compares
the features the Preprocessor made at serving time with those it makes of the training
rows, feature by feature (PSI), and draws the worst ones as a PNG.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.inference.predictor import Predictor
from modalfuse.monitor.drift import Reference, drift_summary, serving_fields
from modalfuse.monitor.predlog import LoggedPredictions
from modalfuse.spec import FieldKind

PREDICTION_COLUMN = "predicted_label"


def _evidently_frames(predictor: Predictor, reference: Reference,
                      logged: LoggedPredictions) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    spec = predictor.spec
    numeric = [f.name for f in spec.fields if f.kind in (FieldKind.numeric, FieldKind.boolean)]
    categorical = [f.name for f in spec.fields if f.kind == FieldKind.categorical]
    cols = numeric + categorical
    ref = reference.fields[cols].copy()
    ref[PREDICTION_COLUMN] = reference.predicted
    cur = serving_fields(spec, logged.records())[cols].copy()
    cur[PREDICTION_COLUMN] = logged.frame["label"].to_numpy()[:len(cur)]
    for c in numeric:
        ref[c], cur[c] = ref[c].astype(float), cur[c].astype(float)
    for c in [*categorical, PREDICTION_COLUMN]:
        ref[c] = ref[c].astype(object).where(ref[c].notna(), "<missing>").astype(str)
        cur[c] = cur[c].astype(object).where(cur[c].notna(), "<missing>").astype(str)
    return ref, cur, {"numerical": numeric, "categorical": [*categorical, PREDICTION_COLUMN]}


def evidently_drift(predictor: Predictor, reference: Reference, logged: LoggedPredictions,
                    html: Path) -> dict[str, Any]:
    """Run Evidently's DataDriftPreset; save its HTML and return per-column results."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref, cur, kinds = _evidently_frames(predictor, reference, logged)
    definition = DataDefinition(numerical_columns=kinds["numerical"],
                                categorical_columns=kinds["categorical"])
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition))
    snapshot.save_html(str(html))
    out: dict[str, Any] = {"columns": {}, "drifted_columns": None, "share_drifted": None}
    for m in snapshot.dict()["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("DriftedColumnsCount"):
            out["drifted_columns"] = m["value"]["count"]
            out["share_drifted"] = m["value"]["share"]
        elif cfg.get("type", "").endswith("ValueDrift"):
            p = float(m["value"])
            threshold = float(cfg.get("threshold", 0.05))
            # Evidently's p-value tests flag drift below the threshold, distance tests above it.
            is_p = "p_value" in str(cfg.get("method", ""))
            out["columns"][cfg["column"]] = {
                "method": cfg.get("method"), "value": p, "threshold": threshold,
                "drift": p < threshold if is_p else p >= threshold}
    out["prediction_drift"] = out["columns"].get(PREDICTION_COLUMN)
    return out


def skew_png(skew: list[dict], path: Path, top: int = 15) -> None:
    """Save a bar chart of the `top` most skewed features' PSI as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = skew[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    colours = ["#c0392b" if r["status"] == "drift" else "#e67e22" if r["status"] == "warn"
               else "#27ae60" for r in rows]
    ax.barh([r["feature"] for r in rows], [r["psi"] for r in rows], color=colours)
    ax.axvline(0.1, color="grey", ls=":", lw=1)
    ax.axvline(0.25, color="grey", ls="--", lw=1)
    ax.set_xlabel("PSI, serving features vs the training features the model saw")
    ax.set_title("training-serving skew (worst features)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def monitor_report(predictor: Predictor, reference: Reference, logged: LoggedPredictions,
                   out_dir: Path) -> dict[str, Any]:
    """Write drift.html (Evidently), skew.png and summary.json into out_dir; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = drift_summary(predictor, reference, logged, top=25)
    summary["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if len(logged):
        summary["evidently"] = evidently_drift(predictor, reference, logged,
                                               out_dir / "drift.html")
        skew_png(summary["skew"]["top"], out_dir / "skew.png")
        summary["files"] = {"report": "drift.html", "skew": "skew.png"}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    return summary


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
