"""Which recipe `modalfuse train` (and so `make run`) trains when none is named.

The grouped-CV champion of the ablation (docs/ablation.md), when its whole training run
(CV, final fit, companions) fits the budget on the machine `scripts/bench_train.py
--record` measured it on; otherwise the LightGBM baseline. The measurement is committed
as `champion.json` beside this module, so the choice is a file in the repo, made by a
command, never typed by hand, and `modalfuse train` says which and why.

The record names the dataset its ablation ran on (`dataset`; a record without one was made
on the built-in dataset). Training another dataset takes the same recipe, and the message
says only that: that dataset's numbers and times say nothing about this one.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAMPION_FILE = Path(__file__).with_name("champion.json")
BASELINE = "gbm"
BUDGET_S = 600  # 10 minutes on the 2-core reference machine
RECORDED_ON = "pokemon"  # the dataset of a record that does not name one


def default_recipe(path: Path = CHAMPION_FILE, dataset: str | None = None) -> tuple[str, str]:
    """(the recipe to train by default, a sentence saying why); `dataset`: the one about to
    be trained (None: the one the record was measured on)."""
    if not path.exists():
        return BASELINE, (f"{BASELINE}: no champion is recorded ({path.name} is written by "
                          "`python scripts/bench_train.py --record`)")
    d = json.loads(path.read_text())
    champion, seconds, budget = d["champion"], float(d["seconds"]), float(d["budget_s"])
    if dataset is not None and dataset != d.get("dataset", RECORDED_ON):
        chosen = champion if seconds <= budget else BASELINE
        return chosen, (f"{chosen}: the default recipe, chosen on another dataset's ablation; "
                        f"`modalfuse ablation -d {dataset}` compares the recipes on this one "
                        f"and `--model NAME` trains another")
    where = f"{d.get('cpus', '?')} CPUs, measured by `{d.get('command', 'scripts/bench_train.py')}`"
    if champion == BASELINE:
        return BASELINE, f"{BASELINE}: the baseline is the grouped-CV champion"
    if seconds <= budget:
        return champion, (f"{champion}: the grouped-CV champion of docs/ablation.md (CV macro-F1 "
                          f"{d['cv_macro_f1']:.3f} vs {BASELINE} {d['baseline_cv_macro_f1']:.3f}); "
                          f"its training took {seconds:.0f} s, within {budget:.0f} s ({where})")
    return BASELINE, (f"{BASELINE}: the grouped-CV champion {champion} took {seconds:.0f} s to "
                      f"train, over the {budget:.0f} s budget ({where}); `--model {champion}` "
                      "trains it anyway")
