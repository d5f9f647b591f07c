"""What the Predict tab shows of one explained prediction, as text and HTML: probabilities,
the image/table share bar and the status line (one share definition, `Explanation`'s), the
prediction set, the OOD warning, the contributions in percentage points, the heatmap legend.

Pure functions of an `Explanation` (or a prediction dict), so the UI tests check them without
a browser; no markup here loads anything from outside the page (the UI stays offline).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from modalfuse.inference.explain import (
    HEAT_AGAINST,
    HEAT_STOPS,
    HEAT_SUPPORTS,
    SHARE_DEFINITION,
    Explanation,
)

CONTRIBUTION_COLUMNS = ["input", "value", "contribution (pp)"]
MODALITY_WORDS = {"both": "the fields and the image", "fields": "the fields only (no image)",
                  "image": "the image only (no fields)"}


def percent(p: float) -> str:
    """A probability with one decimal that never reads 100 % unless it is 1 (nor 0 % unless
    it is 0): 0.9996 -> '>99.9 %', 0.00001 -> '<0.1 %'."""
    if p >= 1.0:
        return "100 %"
    if p <= 0.0:
        return "0 %"
    text = f"{100 * p:.1f}"
    if text == "100.0":
        return ">99.9 %"
    if text == "0.0":
        return "<0.1 %"
    return f"{text} %"


def points(v: float) -> str:
    """A probability difference in signed percentage points: 0.306 -> '+30.6 pp'."""
    return f"{100 * v:+.1f} pp"


def share_text(share: float | None) -> str:
    """A modality's signed share of the move, as a percentage ('n/a' when undefined)."""
    return "n/a" if share is None else f"{100 * share:.1f} %"


def top_classes_html(probabilities: dict[str, float], k: int = 5) -> str:
    """The `k` most probable classes as labelled bars, with `percent` texts."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])[:k]
    rows = []
    for i, (label, p) in enumerate(ranked):
        weight = "600" if i == 0 else "400"
        rows.append(
            f'<div class="mf-top-row" style="margin:4px 0">'
            f'<div style="display:flex;justify-content:space-between;font-weight:{weight}">'
            f'<span>{html.escape(label)}</span><span class="mf-p">{percent(p)}</span></div>'
            f'<div style="background:#e5e7eb;height:8px;border-radius:4px">'
            f'<div style="background:#f97316;height:8px;border-radius:4px;'
            f'width:{100 * max(0.0, min(1.0, p)):.2f}%"></div></div></div>')
    return '<div id="mf-top-list"><b>Top classes</b>' + "".join(rows) + "</div>"


def modality_summary(e: Explanation) -> str:
    """One sentence with each modality's contribution and share, the same in the status
    line and under the share bar."""
    return (f"the fields move it {points(e.table_contribution)} (table share "
            f"{share_text(e.table_share)}) and the image {points(e.image_contribution)} "
            f"(image share {share_text(e.image_share)}) of a move of {points(e.move)}")


def share_html(e: Explanation) -> str:
    """The image/table bar: each modality's signed contribution (pp) and its share of the
    move, drawn left (against) or right (for) of zero, with the definition underneath."""
    scale = max(abs(e.table_contribution), abs(e.image_contribution), 1e-12)
    rows = []
    for name, part, share in (("table", e.table_contribution, e.table_share),
                              ("image", e.image_contribution, e.image_share)):
        width = 50 * abs(part) / scale
        colour = HEAT_SUPPORTS if part >= 0 else HEAT_AGAINST
        left = 50 if part >= 0 else 50 - width
        rows.append(
            f'<div class="mf-share-row" data-modality="{name}" style="margin:4px 0">'
            f'<div style="display:flex;justify-content:space-between"><span>{name}</span>'
            f'<span class="mf-share-value">{points(part)} · share {share_text(share)}</span>'
            f'</div><div style="position:relative;background:#eef0f3;height:10px">'
            f'<div style="position:absolute;left:50%;top:-2px;bottom:-2px;width:1px;'
            f'background:#6b7280"></div><div style="position:absolute;left:{left:.2f}%;'
            f'width:{width:.2f}%;height:10px;background:{colour}"></div></div></div>')
    return ('<div id="mf-share-bar"><b>Share of the prediction: image vs table</b>'
            + "".join(rows)
            + f'<p class="mf-share-summary" style="font-size:0.85em;margin:4px 0">'
              f"Base {percent(e.base_value)} → {html.escape(e.label)} {percent(e.probability)}: "
              f"{html.escape(modality_summary(e))}.</p>"
            + f'<p style="font-size:0.8em;color:#4b5563;margin:2px 0">'
              f"{html.escape(SHARE_DEFINITION)}</p></div>")


def status_markdown(e: Explanation) -> str:
    """The status line of an explained prediction: what, from which inputs, and why."""
    return (f"Predicted **{e.label}** ({percent(e.probability)}) by model "
            f"`{e.model_version}` from {MODALITY_WORDS.get(e.mode, e.mode)}. With nothing "
            f"known the model gives {e.label} {percent(e.base_value)}; "
            f"{modality_summary(e)}.")


def trust_html(prediction: dict[str, Any]) -> str:
    """The prediction set with its coverage, the inputs used, and the OOD warning (which
    input, and why) of a prediction dict as `Predictor.predict` returns it."""
    parts = []
    used = (prediction.get("modalities") or {}).get("used") or []
    missing = (prediction.get("modalities") or {}).get("missing") or []
    parts.append(f'<p id="mf-modalities">Made from: <b>{" and ".join(used) or "?"}</b>'
                 + (f" (missing: {', '.join(missing)})" if missing else "") + "</p>")
    pset = prediction.get("prediction_set")
    if pset:
        labels = ", ".join(html.escape(lab) for lab in pset["labels"])
        parts.append(f'<p id="mf-prediction-set">Prediction set at {percent(pset["coverage"])} '
                     f"coverage ({html.escape(str(pset['method']).upper())}): <b>{labels}</b> "
                     f"— calibrated to hold the true class for {percent(pset['coverage'])} of "
                     "inputs like the training data (on average over inputs, not for each class; "
                     "see the model's measured coverage in docs/trust.md).</p>")
    else:
        parts.append('<p id="mf-prediction-set">No prediction set: this model was saved '
                     "without a conformal calibration.</p>")
    ood = prediction.get("ood") or {}
    if ood.get("flag"):
        why = []
        image = ood.get("image") or {}
        if image.get("flag"):
            why.append(f"the image is unlike the training images (score {image['score']:g} > "
                       f"threshold {image['threshold']:g})")
        for name, reason in ((ood.get("fields") or {}).get("reasons") or {}).items():
            why.append(f"field <b>{html.escape(name)}</b>: {html.escape(str(reason))}")
        items = "".join(f"<li>{w}</li>" for w in why)
        parts.append('<div id="mf-ood" role="alert" style="border:2px solid #b91c1c;'
                     'background:#fef2f2;color:#7f1d1d;padding:6px 10px;border-radius:6px">'
                     "<b>⚠ Out of distribution: do not trust this prediction.</b>"
                     f'<ul style="margin:4px 0">{items}</ul></div>')
    else:
        parts.append('<p id="mf-ood-ok">No input is out of distribution.</p>')
    return "".join(parts)


def legend_html(e: Explanation) -> str:
    """The heatmap's colour scale (-max ... 0 ... +max pp) and what its colours mean."""
    if e.heatmap is None:
        return '<div id="mf-heat-legend">No heatmap: the prediction was made without an image.</div>'
    peak = e.heat_scale
    stops = ", ".join(f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in HEAT_STOPS)
    label = html.escape(e.label)
    return (
        '<div id="mf-heat-legend" style="font-size:0.85em">'
        f'<div style="height:12px;background:linear-gradient(to right, {stops});'
        'border:1px solid #9ca3af"></div>'
        '<div style="display:flex;justify-content:space-between">'
        f'<span>{points(-peak)}</span><span>0</span><span>{points(peak)}</span></div>'
        f'<p style="margin:2px 0"><span style="color:{HEAT_SUPPORTS}">■ orange</span>: the '
        f"patch supports {label} (hiding it lowers its probability); "
        f'<span style="color:{HEAT_AGAINST}">■ purple</span>: it speaks against {label}; '
        "clear: no effect. Left: the image the model saw; right: the heatmap over it in grey. "
        "Each patch is hidden alone, so the patches need not add up to the image's "
        "contribution.</p></div>")


def contributions_frame(e: Explanation, image_column: str) -> pd.DataFrame:
    """Every input's Shapley contribution in percentage points, largest first."""
    if e.mode == "image":  # no field was given: one row says so instead of a row of zeros each
        rows = [{"input": "all fields", "value": "(not given)", "contribution (pp)": 0.0}]
    else:
        rows = [{"input": f, "value": show_value(e.values.get(f)), "contribution (pp)": 100 * v}
                for f, v in e.top_contributions()]
    image_value = "(not given)" if e.mode == "fields" else ""
    rows.append({"input": f"{image_column} (whole image)", "value": image_value,
                 "contribution (pp)": 100 * e.image_contribution})
    table = pd.DataFrame(rows, columns=CONTRIBUTION_COLUMNS)
    table["contribution (pp)"] = table["contribution (pp)"].round(2)
    return table.sort_values("contribution (pp)", key=np.abs, ascending=False,
                             kind="stable").reset_index(drop=True)


def show_value(v: Any) -> str:
    """A field value as the contributions table shows it."""
    if v is None:
        return "(missing)"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
