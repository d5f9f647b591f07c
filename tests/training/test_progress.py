"""Code tier: progress of the long loops — a small real ablation, training and tuning on the
fixture report their models, folds, epochs and trials with counts that add up; the library
says nothing without a reporter; the CLI shows progress on stderr, never on stdout."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from modalfuse.models.netconfig import NetConfig
from modalfuse.training.config import TrainConfig
from progress_recorder import Recorder

TINY = {"image_size": 16, "width": 4, "embed_dim": 8, "epochs": 2, "batch_size": 32,
        "tab_hidden": 8, "views_per_epoch": 1}
TINY_NET = NetConfig.model_validate(TINY)


def assert_counts_make_sense(rec: Recorder) -> None:
    """Every round of every kind counts up from 0 by at most one at a time to its total."""
    kinds = {k for k, *_ in rec.steps}
    for kind in kinds:
        for rnd in rec.rounds(kind):
            dones = [d for _, d, _ in rnd]
            total = rnd[0][2]
            assert dones[0] == 0, (kind, rnd[:3])
            assert all(0 <= b - a <= 1 for a, b in zip(dones, dones[1:], strict=False)), (kind, dones)
            if total is not None:
                assert dones[-1] == total and max(dones) <= total, (kind, dones, total)


def test_cross_validation_reports_folds_and_epochs(fixture_dataset, fixture_splits):
    from modalfuse.training.folds import FoldEngine, training_labels

    rec = Recorder()
    cfg = TrainConfig(model="cnn", seed=0, net=TINY_NET)
    engine = FoldEngine(fixture_dataset, fixture_splits, cfg,
                        training_labels(fixture_dataset, fixture_splits), reporter=rec)
    engine.cross_validate("cnn")
    assert_counts_make_sense(rec)
    n_folds = len(engine.folds)
    assert [(n, d) for n, d, _ in rec.rounds("fold")[0]][:2] == [("cnn without fold 0", 0),
                                                                 ("cnn without fold 1", 1)]
    epochs = rec.rounds("epoch")
    assert len(epochs) == n_folds  # one network per fold, each epoch by epoch
    assert all([d for _, d, _ in r] == [0, 1, 2] for r in epochs)
    assert epochs[0][0][0] == "cnn network, without folds 0" and "loss" in epochs[0][-1][0]
    decoded = {r[0][0]: r[-1][1] for r in rec.rounds("image")}
    assert decoded["decoding images"] == len(fixture_dataset.table)
    assert decoded["decoding training views"] > 0


def test_ablation_reports_models_folds_and_epochs(fixture_dataset, fixture_splits, tmp_path):
    from modalfuse.training.ablation import run_ablation

    rec = Recorder()
    cfg = TrainConfig(model="stacking", seed=0, num_boost_round=20, net=TINY_NET)
    report = run_ablation(fixture_dataset, fixture_splits, tmp_path, cfg, ("gbm_tabular", "cnn"),
                          reporter=rec)
    assert_counts_make_sense(rec)
    n_folds = report["dataset"]["folds"]

    models = rec.of("model")
    assert [d for _, d, _, _ in models][0] == 0 and models[-1][1:3] == (2, 2)
    assert {t for _, _, t, _ in models} == {2}
    assert any(n.startswith("gbm_tabular: cross-validation") for n, *_ in models)
    assert any(n.startswith("cnn: final fit") for n, *_ in models)
    assert all(e is not None and e >= 0 for *_, e in models)  # the ablation's own estimate
    assert models[-1][3] == 0  # nothing left once the last model is done

    folds = rec.rounds("fold")
    assert all(r[0][2] == n_folds for r in folds)
    cv_of = {r[0][0].split(" without")[0] for r in folds}
    assert {"gbm_tabular", "cnn"} <= cv_of  # each model's CV (and its companions')

    epochs = rec.rounds("epoch")
    cnn_fits = [r for r in epochs if r[0][0].startswith("cnn network")]
    # one network per CV fold and the final one on every training row, each epoch by epoch
    assert len(cnn_fits) == n_folds + 1
    assert all([d for _, d, _ in r] == [0, 1, 2] for r in cnn_fits)
    assert sum("all training rows" in r[0][0] for r in cnn_fits) == 1
    assert "loss" in cnn_fits[0][-1][0]

    images = rec.rounds("image")
    assert images[0][-1][1:] == (len(fixture_dataset.table), len(fixture_dataset.table))


def test_the_library_is_silent_without_a_reporter(fixture_dataset, fixture_splits, capsys):
    from modalfuse.training.folds import FoldEngine, training_labels

    cfg = TrainConfig(model="cnn", seed=0, num_boost_round=10, net=TINY_NET.model_copy(update={"epochs": 1}))
    engine = FoldEngine(fixture_dataset, fixture_splits, cfg,
                        training_labels(fixture_dataset, fixture_splits))
    engine.cross_validate("gbm_tabular")
    engine.fit("cnn")  # decodes the views, trains a network
    out = capsys.readouterr()
    assert out.out == ""
    assert "decoding" not in out.err and "epoch" not in out.err


def test_tune_reports_trials_and_their_folds(fixture_dataset, fixture_splits, tmp_path):
    from modalfuse.config import Settings
    from modalfuse.training.tune import tune

    rec = Recorder()
    tune(fixture_dataset, fixture_splits, Settings(data_dir=tmp_path), time_budget=None,
         n_trials=2, families=("gbm_tabular",), storage=f"sqlite:///{tmp_path / 'optuna.db'}",
         seed=0, base=TrainConfig(num_boost_round=10), track=False, reporter=rec)
    assert_counts_make_sense(rec)
    trials = rec.of("trial")
    assert [(d, t) for _, d, t, _ in trials] == [(0, 2), (1, 2), (1, 2), (2, 2)]
    assert trials[0][0] == "#0 gbm_tabular"
    assert trials[1][0].startswith("#0 gbm_tabular: CV macro-F1 ")  # never pruned: the first
    assert trials[2][0].startswith("#1 gbm_tabular, best so far ")
    assert len(rec.rounds("fold")) >= 2  # each trial's folds (fewer when pruned)


def test_the_plan_states_models_folds_and_time(fixture_splits):
    from modalfuse.training.ablation_plan import AblationPace, plan_ablation

    cfg = TrainConfig(net=NetConfig(epochs=6))
    plan = plan_ablation(fixture_splits, cfg)
    assert plan.models[0] == "gbm_tabular" and plan.folds == len(fixture_splits.folds())
    assert plan.summary().startswith(f"{len(plan.models)} models × {plan.folds} folds")
    assert "on a quiet 2-core machine like the reference" in plan.summary()
    # networks cost per epoch; what a recipe reuses is paid for once, by whichever comes first
    longer = plan_ablation(fixture_splits, TrainConfig(net=NetConfig(epochs=12)))
    assert longer.seconds["cnn"] > plan.seconds["cnn"]
    assert longer.seconds["gbm"] == plan.seconds["gbm"]
    # a training step measured twice as slow as the reference's doubles the epochs' part
    from modalfuse.training.ablation_plan import REFERENCE_STEP_S, SECONDS_2_CORES, minutes

    slow = plan_ablation(fixture_splits, cfg, ("cnn",), step_s=2 * REFERENCE_STEP_S)
    fixed, per_epoch = SECONDS_2_CORES["cnn"]
    assert slow.seconds["cnn"] / plan.seconds["cnn"] == pytest.approx(
        (fixed + 12 * per_epoch) / (fixed + 6 * per_epoch))
    assert f"a network training step took {2 * REFERENCE_STEP_S * 1000:.0f} ms" in slow.summary()
    assert [minutes(s) for s in (40, 209, 1500, 4000)] == ["40 s", "3.5 min", "25 min",
                                                           "1 h 07 min"]
    alone = plan_ablation(fixture_splits, cfg, ("stacking",))
    assert alone.seconds["stacking"] > plan.seconds["stacking"]
    assert plan_ablation(fixture_splits, cfg, ("cnn",)).summary().startswith("1 model × ")
    # the time left follows how the finished models compared with their estimates
    pace = AblationPace(plan)
    first = plan.models[0]
    assert pace.seconds_left(0) == pytest.approx(plan.total_seconds)
    pace.finished(first, 2 * plan.seconds[first])
    assert pace.seconds_left(1) == pytest.approx(2 * (plan.total_seconds - plan.seconds[first]))


def test_train_command_shows_progress_on_stderr_only(fixture_dataset, tmp_path):
    from modalfuse.cli import app

    res = CliRunner().invoke(app, ["train", "-d", "pokemon", "--no-track", "--rounds", "20",
                                   "--model", "gbm", "--out", str(tmp_path / "bundle")])
    assert res.exit_code == 0, res.output
    assert "fold 0/5 gbm without fold 0" in res.stderr
    assert "fold 5/5" in res.stderr and "took" in res.stderr
    assert "image" in res.stderr and "decoding images" in res.stderr
    assert "fold " not in res.stdout and "ETA" not in res.stdout
    assert "bundle:" in res.stdout


def test_ablation_command_states_its_plan_and_reports_models(fixture_dataset, tmp_path):
    from modalfuse.cli import app

    res = CliRunner().invoke(app, ["ablation", "-d", "pokemon", "--model", "gbm_tabular",
                                   "--epochs", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    first = res.stderr.index("ablation: 1 model × 5 folds, then a final fit of it")
    assert "about" in res.stderr and "2-core" in res.stderr
    assert first < res.stderr.index("model 0/1 gbm_tabular: cross-validation")
    assert "model 1/1 gbm_tabular" in res.stderr
    assert "ETA" in res.stderr and "ETA" not in res.stdout
    assert "modality ablation" in res.stdout

