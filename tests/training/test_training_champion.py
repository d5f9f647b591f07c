"""What `modalfuse train` trains by default: the recorded CV champion when it fits the
budget, else the baseline, and it says why."""

from __future__ import annotations

import json

from modalfuse.training import recipes
from modalfuse.training.champion import CHAMPION_FILE, default_recipe


def record(tmp_path, **over):
    d = {"champion": "stacking", "seconds": 250.0, "budget_s": 600, "cpus": 2,
         "cv_macro_f1": 0.57, "baseline_cv_macro_f1": 0.52,
         "command": "python scripts/bench_train.py --record", **over}
    path = tmp_path / "champion.json"
    path.write_text(json.dumps(d))
    return path


def test_the_champion_when_it_fits(tmp_path):
    model, why = default_recipe(record(tmp_path))
    assert model == "stacking"
    assert "grouped-CV champion" in why and "250 s, within 600 s" in why


def test_the_baseline_when_it_does_not_fit_and_says_why(tmp_path):
    model, why = default_recipe(record(tmp_path, seconds=900.0))
    assert model == "gbm"
    assert "over the 600 s budget" in why and "--model stacking" in why


def test_the_baseline_without_a_record(tmp_path):
    model, why = default_recipe(tmp_path / "none.json")
    assert model == "gbm" and "bench_train.py --record" in why


def test_the_committed_record_names_a_known_recipe():
    model, _ = default_recipe()
    recipes.get(model)
    if CHAMPION_FILE.exists():
        d = json.loads(CHAMPION_FILE.read_text())
        assert d["command"].startswith("python scripts/bench_train.py")


def test_another_dataset_is_told_the_choice_was_made_elsewhere(tmp_path):
    model, why = default_recipe(record(tmp_path), dataset="fruit")  # no `dataset`: the built-in
    assert model == "stacking" and "chosen on another dataset's ablation" in why
    assert "modalfuse ablation -d fruit" in why
    assert "0.57" not in why and "250" not in why and "pokemon" not in why
    model, _ = default_recipe(record(tmp_path, seconds=900.0, dataset="fruit"), dataset="birds")
    assert model == "gbm"


def test_the_recorded_dataset_keeps_the_measured_reason(tmp_path):
    _, why = default_recipe(record(tmp_path, dataset="fruit"), dataset="fruit")
    assert "grouped-CV champion" in why and "250 s, within 600 s" in why
    _, why = default_recipe(record(tmp_path), dataset="pokemon")
    assert "grouped-CV champion" in why
