"""Evaluation through the Predictor, from raw rows: the numbers a user will see in production.

Metrics: accuracy, macro-F1, expected calibration error, a per-class report and a
confusion matrix drawn as a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.errors import InvalidInput
from modalfuse.inference.predictor import Predictor, table_records


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_metrics(proba: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro and weighted F1, log loss and calibration error of probabilities."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    pred = proba.argmax(axis=1)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=present, zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-12, 1), labels=list(range(len(labels))))),
        "ece": expected_calibration_error(proba, y),
    }


def per_class_report(proba: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """Precision, recall, F1 and support of every label."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        y, proba.argmax(axis=1), labels=list(range(len(labels))), zero_division=0)
    return {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                  "support": int(s[i])} for i, lab in enumerate(labels)}


def plot_confusion(proba: np.ndarray, y: np.ndarray, labels: list[str], path: Path,
                   title: str) -> Path:
    """Save the confusion matrix of the predictions as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, proba.argmax(axis=1), labels=list(range(len(labels))))
    fig, ax = plt.subplots(figsize=(9, 8))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def predict_dataset_rows(predictor: Predictor, ds: Dataset, ids: np.ndarray) -> np.ndarray:
    """Probabilities for dataset rows, from their raw fields and image bytes."""
    rows = ds.table.set_index(ds.spec.id_column).loc[ids].reset_index()
    return predictor.predict_proba(table_records(ds.spec, rows), ds.row_images(rows))


def evaluate(predictor: Predictor, ds: Dataset, ids: np.ndarray, out_dir: Path | None,
             name: str = "test") -> dict:
    """Score the rows `ids` of a dataset through the Predictor: metrics and per-class report.

    With `out_dir`, also writes the confusion matrix and the metrics JSON there.
    """
    rows = ds.table.set_index(ds.spec.id_column).loc[ids].reset_index()
    proba = predict_dataset_rows(predictor, ds, ids)
    pos = {lab: i for i, lab in enumerate(predictor.labels)}
    unknown = sorted(set(rows[ds.spec.target]) - set(pos))
    if unknown:
        raise InvalidInput(f"{name} rows have labels the model does not know: {unknown}")
    y = rows[ds.spec.target].map(pos).to_numpy()
    metrics = classification_metrics(proba, y, predictor.labels)
    result = {"split": name, "metrics": metrics,
              "per_class": per_class_report(proba, y, predictor.labels)}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_confusion(proba, y, predictor.labels, out_dir / f"confusion_{name}.png",
                       f"{predictor.model_version} on {name} "
                       f"(acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f})")
        (out_dir / f"metrics_{name}.json").write_text(json.dumps(result, indent=2))
    return result
