"""Pictures of many explanations at once (`modalfuse explain --global`): which inputs matter
over a split, and the image's share of each prediction, per true class.

matplotlib is an optional extra: it is imported inside the drawing functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from modalfuse.inference.explain import Explanation, global_importance


def global_plots(explanations: Sequence[Explanation], truth: Sequence[str], image_name: str,
                 model_version: str, split: str, dataset: str, out_dir: Path,
                 reference: str = "") -> list[Path]:
    """Two PNGs: mean |contribution| per input, and the image's share per true class."""
    import matplotlib

    matplotlib.use("Agg")
    importance = out_dir / f"explain_global_{dataset}.png"
    modality = out_dir / f"explain_modality_{dataset}.png"
    importance_plot(explanations, image_name, f"global importance, {len(explanations)} {split} "
                    f"rows; {reference}\nmodel {model_version}", importance)
    modality_plot(explanations, truth, split, modality)
    return [importance, modality]


def importance_plot(explanations: Sequence[Explanation], image_name: str, title: str,
                    path: Path) -> None:
    """Mean |Shapley value| per input as horizontal bars, the image highlighted."""
    import matplotlib.pyplot as plt

    imp = global_importance(explanations, image_name)["mean_abs_contribution"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(imp) + 1.5))
    colours = ["#d9a400" if n == image_name else "#4a7bb7" for n in imp.index[::-1]]
    ax.barh(imp.index[::-1], imp.to_numpy()[::-1], color=colours)
    ax.set_xlabel("mean |Shapley value| of the predicted class's probability")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def modality_plot(explanations: Sequence[Explanation], truth: Sequence[str], split: str,
                  path: Path) -> None:
    """Box plots of the image's signed share of each explanation, per true class (rows whose
    prediction barely moved from the base value have no share and are left out)."""
    import matplotlib.pyplot as plt

    share = pd.DataFrame({"class": truth, "image": [e.image_share for e in explanations],
                          "correct": [e.label == c for e, c in zip(explanations, truth, strict=True)]})
    share = share.dropna(subset=["image"])
    order = share.groupby("class")["image"].median().sort_values().index
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.boxplot([share.loc[share["class"] == c, "image"].to_numpy() for c in order])
    ax.set_xticks(range(1, len(order) + 1), list(order), rotation=60, fontsize=8)
    ax.set_ylabel("image share (signed; < 0 or > 1 when\none modality pushes against the other)")
    ax.axhline(float(share["image"].median()), color="#d9a400", lw=1, ls="--")
    ax.set_title(f"image vs table: share owed to the image, per true class (median "
                 f"{share['image'].median():.2f}; {split} rows)", fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
