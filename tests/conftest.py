"""Shared fixtures: a synthetic dataset, its splits and a quickly trained bundle (per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixture_data import make_fixture_dataset


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_dir(tmp_path_factory):
    # Nothing a test does may land in the user's data folder.
    # Several tests import more datasets into it, in an order xdist decides: the commands that
    # take no -d use the session's fixture dataset, named here (tests of the default choice
    # unset it in a data folder of their own).
    d = tmp_path_factory.mktemp("modalfuse-data")
    old = {k: os.environ.get(k) for k in ("MODALFUSE_DATA_DIR", "MODALFUSE_DATASET")}
    os.environ["MODALFUSE_DATA_DIR"] = str(d)
    os.environ["MODALFUSE_DATASET"] = "pokemon"
    yield d
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def fixture_dataset(_isolated_data_dir: Path):
    from modalfuse.data.dataset import load_dataset
    from modalfuse.data.split import make_splits, save_splits

    root = make_fixture_dataset(_isolated_data_dir / "datasets" / "pokemon")
    ds = load_dataset(root)
    save_splits(make_splits(ds, seed=0), root)
    return load_dataset(root)


@pytest.fixture(scope="session")
def fixture_splits(fixture_dataset):
    from modalfuse.data.split import load_splits

    return load_splits(fixture_dataset)


@pytest.fixture(scope="session")
def fixture_bundle(fixture_dataset, fixture_splits, _isolated_data_dir: Path):
    from modalfuse.training.train import TrainConfig, train

    out = _isolated_data_dir / "models" / "pokemon" / "latest"
    return train(fixture_dataset, fixture_splits, out, TrainConfig(num_boost_round=40, seed=0))


@pytest.fixture(scope="session")
def predictor(fixture_bundle):
    from modalfuse.inference.predictor import Predictor

    return Predictor.from_path(fixture_bundle.path)
