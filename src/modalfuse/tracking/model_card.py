"""Model cards: a markdown page per model with its data, metrics (overall, per class, per
slice), split audit, intended use and limitations — every number computed, none typed.

The card is written into the bundle folder (`model_card.md`), so it travels with the
model: logged to MLflow, set as the registered version's description, served by the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput
from modalfuse.inference.bundle import ModelBundle
from modalfuse.inference.evaluate import classification_metrics, per_class_report, predict_dataset_rows
from modalfuse.inference.predictor import Predictor
from modalfuse.markdown import markdown_table

CARD_FILE = "model_card.md"
# Below these counts a per-class or per-slice number is too noisy to lean on.
MIN_CLASS_SUPPORT = 5
MIN_SLICE_ROWS = 10


def card_facts(bundle: ModelBundle, ds: Dataset, splits: Splits,
               slice_field: str | None = None) -> dict[str, Any]:
    """Everything the card says, scored on the frozen test split through the Predictor.

    Per-slice metrics use `slice_field`, else the dataset spec's `slice_field`.
    """
    spec = ds.spec
    test_ids = splits.ids("test")
    predictor = Predictor(bundle)
    proba = predict_dataset_rows(predictor, ds, test_ids)
    rows = ds.table.set_index(spec.id_column).loc[test_ids].reset_index()
    pos = {lab: i for i, lab in enumerate(bundle.labels)}
    y = rows[spec.target].map(lambda v: pos.get(v, -1)).to_numpy()
    known = y >= 0
    field = slice_field or spec.slice_field
    if field and field not in rows.columns:
        raise InvalidInput(f"slice field {field!r} is not a column of {spec.name}; columns: "
                           f"{list(rows.columns)}")
    slices: dict[str, Any] = {"field": field, "values": []}
    if field:
        for value, idx in rows[known].groupby(field).indices.items():
            sel = np.flatnonzero(known)[idx]
            m = classification_metrics(proba[sel], y[sel], bundle.labels)
            slices["values"].append({"value": _plain(value), "n": len(sel),
                                     "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]})
    return {
        "model_version": bundle.model_version,
        "created_at": bundle.meta.get("created_at"),
        "model_kind": bundle.meta["model"]["kind"],
        "dataset": {"name": spec.name, "version": ds.version, "rows": len(ds.table),
                    "sources": ds.manifest.get("sources", {}),
                    "built_at": ds.manifest.get("built_at"), "description": spec.description},
        "target": spec.target,
        "labels": bundle.labels,
        "inputs": [f.name for f in spec.fields
                   if f.name not in bundle.meta.get("training", {}).get("config", {})
                   .get("exclude_fields", [])],
        "image": {"column": spec.image_column, "size": spec.image_size},
        "metrics": {"cv": bundle.metrics.get("cv"),
                    "test": classification_metrics(proba[known], y[known], bundle.labels)},
        "per_class": per_class_report(proba[known], y[known], bundle.labels),
        "slices": slices,
        "audit": splits.audit,
        "training": bundle.meta.get("training", {}),
    }


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_card(facts: dict[str, Any]) -> str:
    """The model card's markdown from its facts (see `card_facts`)."""
    d, m, audit = facts["dataset"], facts["metrics"], facts["audit"]
    cv, test = m.get("cv") or {}, m.get("test") or {}
    lines = [
        f"# Model card: {facts['model_version']}",
        "",
        f"Predicts **{facts['target']}** of a `{d['name']}` record from its table fields and "
        f"its image. Model kind: `{facts['model_kind']}`; created {facts.get('created_at')}.",
        "",
        "Every number below was computed by `modalfuse train` (or `modalfuse card`) on the "
        "frozen test split, through the same Predictor the API uses.",
        "",
        "## Data",
        f"- dataset: `{d['name']}`, content version `{d['version']}` ({d['rows']} rows, "
        f"built {d.get('built_at')})",
    ]
    lines += [f"- source `{k}`: {v}" for k, v in (d.get("sources") or {}).items()]
    lines += [
        f"- target: `{facts['target']}`, {len(facts['labels'])} classes: "
        + ", ".join(facts["labels"]),
        f"- inputs: {', '.join(facts['inputs'])}; image `{facts['image']['column']}` at "
        f"{facts['image']['size']} px",
    ]
    git = facts.get("training", {}).get("git_commit")
    if git:
        lines.append(f"- code: git commit `{git}`")
    metrics = [[key, _f(cv[key]["mean"]) + " ± " + _f(cv[key]["sd"]) if cv.get(key) else "-",
                _f(test.get(key))]
               for key in ("accuracy", "macro_f1", "weighted_f1", "log_loss", "ece")]
    lines += ["", "## Metrics", "", markdown_table(["metric", "grouped CV (mean ± sd)", "test"],
                                                   metrics)]
    lines += ["", f"Test rows: {test.get('n', '-')}.", "", "### Per class (test)", "",
              markdown_table(["class", "precision", "recall", "F1", "support"],
                             [[lab, _f(r["precision"]), _f(r["recall"]), _f(r["f1"]), r["support"]]
                              for lab, r in facts["per_class"].items()])]
    sl = facts["slices"]
    lines += ["", f"### Per {sl['field'] or 'slice'} (test)", ""]
    if sl["values"]:
        lines.append(markdown_table(
            [sl["field"], "rows", "accuracy", "macro-F1"],
            [[v["value"], v["n"], _f(v["accuracy"]), _f(v["macro_f1"])] for v in sl["values"]]))
    else:
        lines.append("No slice field in the dataset spec (`slice_field`), or no test rows.")
    lines += ["", "## Split audit", ""]
    params = audit.get("params", {})
    lines.append("Split parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    lines += ["", markdown_table(["split", "rows", "groups"],
                                 [[s, v["rows"], v["groups"]]
                                  for s, v in audit.get("per_split", {}).items()])]
    lines.append("")
    for c in audit.get("checks", []):
        state = "pass" if c["passed"] else ("FAIL" if c["blocking"] else "warning")
        summary = {k: v for k, v in c.get("summary", {}).items() if k != "counts"}
        lines.append(f"- {c['name']} ({'blocking' if c['blocking'] else 'advisory'}): "
                     f"**{state}** {summary}")
    lines += ["", "## Intended use", "",
              f"{d.get('description') or 'Classification of ' + facts['target'] + '.'} "
              f"For records like those of `{d['name']}` version `{d['version']}`: the same "
              "fields, in the same ranges, with an image of the same kind. A ranked suggestion "
              "for a person to review, with its probabilities.",
              "", "## Limitations", ""]
    lines += limitations(facts)
    return "\n".join(lines) + "\n"


def limitations(facts: dict[str, Any]) -> list[str]:
    """The card's limitation bullets, each derived from a measured fact."""
    out = []
    excluded = facts["audit"].get("excluded_classes") or []
    if excluded:
        out.append(f"- Never predicts {', '.join(excluded)}: too few rows to learn or score "
                   "(left out of modelling by the split).")
    weak = [lab for lab, r in facts["per_class"].items() if r["support"] < MIN_CLASS_SUPPORT]
    if weak:
        out.append(f"- Fewer than {MIN_CLASS_SUPPORT} test rows for {', '.join(weak)}: their "
                   "per-class numbers are noisy.")
    small = [str(v["value"]) for v in facts["slices"]["values"] if v["n"] < MIN_SLICE_ROWS]
    if small:
        out.append(f"- {facts['slices']['field']} values with under {MIN_SLICE_ROWS} test "
                   f"rows: {', '.join(small)}.")
    test = facts["metrics"].get("test") or {}
    if "ece" in test:
        out.append(f"- Calibration: expected calibration error {test['ece']:.3f} on test; "
                   "treat probabilities as scores unless it is small.")
    cv = facts["metrics"].get("cv") or {}
    if "accuracy" in cv and "accuracy" in test:
        out.append(f"- Grouped-CV accuracy varies by ±{cv['accuracy']['sd']:.3f} across folds: "
                   "differences between models smaller than that are not meaningful.")
    out.append("- Inputs outside the training data (new classes, other image styles, fields "
               "outside the spec's ranges) are refused or scored without warning of drift; "
               "monitor drift in production.")
    return out


def write_card(bundle: ModelBundle, ds: Dataset, splits: Splits,
               slice_field: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Compute the card's facts and write `model_card.md` into the bundle folder."""
    facts = card_facts(bundle, ds, splits, slice_field)
    path = bundle.path / CARD_FILE
    path.write_text(render_card(facts))
    return path, facts


def bundle_card(bundle: ModelBundle) -> str:
    """The card of a bundle: its model_card.md, or a short one from its metadata if it has none."""
    path = bundle.path / CARD_FILE
    if path.is_file():
        return path.read_text()
    meta, ds = bundle.meta, bundle.meta.get("dataset", {})
    lines = [f"# Model card: {bundle.model_version}", "",
             f"Dataset `{ds.get('name')}` version `{ds.get('version')}`, target "
             f"`{bundle.spec.target}`, classes: {', '.join(bundle.labels)}.", "",
             "This bundle has no full card (per-class and per-slice metrics, split audit); "
             "write one with `modalfuse card`.", "", "## Metrics", ""]
    for split, vals in (meta.get("metrics") or {}).items():
        if isinstance(vals, dict):
            shown = {k: (v["mean"] if isinstance(v, dict) else v) for k, v in vals.items()
                     if k in ("accuracy", "macro_f1", "ece", "log_loss")}
            lines.append(f"- {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    return "\n".join(lines) + "\n"
