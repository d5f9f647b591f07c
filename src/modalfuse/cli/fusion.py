"""Thin Typer layer for the neural and fused models: the ablation behind `modalfuse evaluate --ablation`
and the options `modalfuse train --model ...` passes down."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from modalfuse.models.netconfig import NetConfig

console = Console()

# What `modalfuse train` trains unless told otherwise: the CV champion of docs/ablation.md
# when its training fits the 10-minute budget on two cores (scripts/bench_train.py), else gbm.
DEFAULT_MODEL = "gbm"


MODEL_OPTION_HELP = "gbm (the LightGBM baseline) or one of: " + ", ".join(
    ["gbm_tabular", "cnn", "stacking", "intermediate", "gbm_embed"])


def net_config(image_size: int | None = None, epochs: int | None = None,
               device: str | None = None, checkpoint: Path | None = None) -> NetConfig:
    """NetConfig from command-line options (None keeps the default)."""
    over = {"image_size": image_size, "epochs": epochs, "device": device, "checkpoint": checkpoint}
    return NetConfig.model_validate({k: v for k, v in over.items() if v is not None})


def ablation(dataset: str, out: Path | None, doc: Path | None, models: list[str] | None,
             seed: int, net: NetConfig, rounds: int = 300) -> dict:
    """Run the ablation, print its table, save JSON + PNG (+ the markdown doc when asked)."""
    from pydantic import ValidationError

    from modalfuse.config import Settings
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import load_splits
    from modalfuse.training.ablation import run_ablation, to_markdown
    from modalfuse.training.folds import MODEL_NAMES
    from modalfuse.training.nets import DeviceError
    from modalfuse.training.train import TrainConfig

    s = Settings()
    ds = load_dataset(s.dataset_dir(dataset))
    out = out or s.reports_dir / "ablation" / dataset
    try:
        cfg = TrainConfig(model="stacking", seed=seed, num_boost_round=rounds, net=net)
        report = run_ablation(ds, load_splits(ds), out, cfg, tuple(models or MODEL_NAMES))
    except (ValueError, DeviceError, ValidationError) as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    print_ablation(report)
    console.print(f"saved {out / 'ablation.json'} and {out / 'ablation.png'}")
    if doc is not None:
        import shutil

        parts = ["modalfuse evaluate --ablation", f"--dataset {dataset}", f"--seed {seed}"]
        if models:
            parts += [f"--model {m}" for m in models]
        defaults = NetConfig().model_dump()
        parts += [f"--{k} {v}" for k, v in net.model_dump().items()
                  if k in ("epochs", "device") and v != defaults[k]]
        if rounds != 300:
            parts.append(f"--rounds {rounds}")
        parts.append(f"--doc {doc}")
        doc.parent.mkdir(parents=True, exist_ok=True)
        png = doc.with_suffix(".png")
        shutil.copyfile(out / "ablation.png", png)
        doc.write_text(to_markdown(report, " ".join(parts), png.name))
        console.print(f"[green]wrote[/] {doc} and {png}")
    return report


def print_ablation(report: dict) -> None:
    t = Table(title=f"modality ablation ({report['dataset']['name']}, champion on CV: "
                    f"{report['champion']})")
    for col in ("model", "CV acc", "CV macro-F1", "CV ECE", "test acc", "test macro-F1",
                "test ECE", "ms/row 1-row", "ms/row batch"):
        t.add_column(col)
    for r in report["results"]:
        cv, te, lat = r["cv"], r["test"], r["latency"]
        t.add_row(r["model"] + (" *" if r["model"] == report["champion"] else ""),
                  f"{cv['accuracy']['mean']:.3f} ± {cv['accuracy']['sd']:.3f}",
                  f"{cv['macro_f1']['mean']:.3f} ± {cv['macro_f1']['sd']:.3f}",
                  f"{cv['ece']['mean']:.3f} ± {cv['ece']['sd']:.3f}",
                  f"{te['accuracy']:.3f}", f"{te['macro_f1']:.3f}", f"{te['ece']:.3f}",
                  f"{lat['single_ms']:.1f}", f"{lat['batch_ms_per_row']:.2f}")
    console.print(t)
