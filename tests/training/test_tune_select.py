"""HPO and in-fold feature selection: trials are nested MLflow runs in an sqlite-backed study,
and neither tuning nor selection reads a row it is judged on (nor the test split at all)."""

from __future__ import annotations

import numpy as np
import pytest

from modalfuse.training.train import TrainConfig


def test_parse_duration():
    from modalfuse.config import parse_duration

    assert parse_duration("90s") == 90 and parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    assert parse_duration("1d") == 86400 and parse_duration(" 10 m ") == 600
    for bad in ("10 minutes", "-5s", "0m", "", "inf", True):
        with pytest.raises(ValueError, match="90s, 10m, 12h, 7d"):
            parse_duration(bad)


def test_tune_uses_training_folds_only_and_nests_trials(fixture_dataset, fixture_splits,
                                                        monkeypatch, tmp_path):
    import optuna

    from modalfuse.config import Settings
    from modalfuse.data.dataset import Dataset
    from modalfuse.tracking.runs import get_client
    from modalfuse.training.tune import default_storage, study_markdown, train_winner, tune

    read: list[str] = []
    original = Dataset.image_bytes
    monkeypatch.setattr(Dataset, "image_bytes",
                        lambda self, name: read.append(name) or original(self, name))
    settings = Settings()
    result, _ = tune(fixture_dataset, fixture_splits, settings, time_budget=None, n_trials=3,
                         families=("gbm", "gbm_tabular"), study_name="test-study", seed=0,
                         base=TrainConfig(seed=0))
    # The study lives in sqlite under the data dir and can be loaded by another worker.
    storage = default_storage(settings)
    assert storage.startswith("sqlite:///") and (settings.data_dir / "optuna" / "studies.db").is_file()
    assert len(optuna.load_study(study_name="test-study", storage=storage).trials) == 3
    assert "3 trials" in study_markdown(storage, "test-study")
    assert result.n_complete + result.n_pruned == 3 and result.n_complete >= 1
    # Test split never read: not one of its images was opened, and no trial fitted or scored it.
    table = fixture_dataset.table.set_index("id")
    test_ids, train_ids = set(fixture_splits.ids("test")), set(fixture_splits.ids("train"))
    assert not set(table.loc[list(test_ids), "image"]) & set(read)
    assert result.ids_seen == train_ids and not result.ids_seen & test_ids
    # Every trial is a nested MLflow run of the tuning run.
    client = get_client(settings)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3
    assert {c.data.tags["optuna.state"] for c in children} <= {"COMPLETE", "PRUNED"}
    assert all("family" in c.data.params for c in children)
    assert parent.data.metrics["best_cv_macro_f1"] == pytest.approx(result.best_value)
    # The winner is retrained on the training part, bundled and registered.
    monkeypatch.setattr(Dataset, "image_bytes", original)
    result = train_winner(result, fixture_dataset, fixture_splits, tmp_path / "winner", settings)
    assert (tmp_path / "winner" / "bundle.json").is_file()
    assert result.registered is not None and result.registered.rsplit("@", 1)[1] in ("champion",
                                                                                        "challenger")


def test_tune_refuses_unknown_family(fixture_dataset, fixture_splits):
    from modalfuse.config import Settings
    from modalfuse.training.tune import tune

    with pytest.raises(ValueError, match="choose from"):
        tune(fixture_dataset, fixture_splits, Settings(), n_trials=1, families=("svm",), track=False)


def test_selector_is_fitted_inside_each_fold(fixture_dataset, fixture_splits, monkeypatch):
    from modalfuse.training.select import TabularSelector, selection_cv, to_markdown

    calls: list[tuple[np.ndarray, int]] = []
    original = TabularSelector.fit

    def spy(self, x, y, names, n_classes, ids=None):
        calls.append((np.asarray(ids), len(x)))
        return original(self, x, y, names, n_classes, ids)

    monkeypatch.setattr(TabularSelector, "fit", spy)
    report = selection_cv(fixture_dataset, fixture_splits, TrainConfig(num_boost_round=20, seed=0),
                          k=5)
    folds = fixture_splits.folds()
    assert len(calls) == len(folds) == report["n_folds"]
    for (ids, n), (tr_ids, va_ids) in zip(calls, folds, strict=True):
        assert set(ids) == set(tr_ids) and n == len(tr_ids)  # the fold's training rows ...
        assert not set(ids) & set(va_ids)  # ... and never its validation rows
        assert not set(ids) & set(fixture_splits.ids("test"))
    assert all(len(f["selected_columns"]) == 5 for f in report["folds"])
    assert {"all_macro_f1", "selected_macro_f1"} <= set(report["summary"])
    assert "top 5" in to_markdown(report)


def test_selector_errors_are_typed():
    from modalfuse.errors import NotFitted
    from modalfuse.training.select import TabularSelector

    with pytest.raises(NotFitted, match="TabularSelector is not fitted"):
        TabularSelector().transform(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choose one of"):
        TabularSelector(method="chi2").fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]), ["a", "b"], 2)
