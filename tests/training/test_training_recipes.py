"""Training tier: the recipe registry — every LightGBM recipe gets the tuned parameters, and
tuning's search space comes from the recipes."""

from __future__ import annotations

import pytest

from modalfuse.models.calibration import CalibratedModel
from modalfuse.models.fused import GeometricPoolModel
from modalfuse.models.gbm import GBMModel
from modalfuse.models.neural import EmbeddingGBMModel, StackingModel
from modalfuse.training import recipes
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import FoldEngine, training_labels

TINY_NET = {"image_size": 16, "width": 4, "embed_dim": 8, "epochs": 1, "batch_size": 32,
            "tab_hidden": 8, "views_per_epoch": 1}
TUNED = {"num_leaves": 5, "min_data_in_leaf": 4, "feature_fraction": 0.7, "lambda_l2": 3.0}


def lightgbm_parts(model) -> list[GBMModel]:
    """Every LightGBM model inside a fitted model (through calibration, stacking, embeddings)."""
    if isinstance(model, GBMModel):
        return [model]
    if isinstance(model, CalibratedModel):
        return lightgbm_parts(model.inner)
    if isinstance(model, EmbeddingGBMModel):
        return lightgbm_parts(model.gbm)
    if isinstance(model, StackingModel | GeometricPoolModel):
        return [g for part in model.parts.values() for g in lightgbm_parts(part)]
    return []


def test_registry_lists_every_recipe_in_order():
    assert recipes.names() == ("gbm_tabular", "gbm", "cnn", "gbm_image", "stacking",
                               "intermediate", "gbm_embed", "linear", "gbm_linear")
    assert set(recipes.tunable()) == {"gbm", "gbm_tabular", "intermediate"}
    with pytest.raises(ValueError, match="unknown model 'nope'; available"):
        recipes.get("nope")


@pytest.mark.parametrize("name", [n for n in recipes.names() if recipes.get(n).uses_lightgbm])
def test_tuned_lightgbm_parameters_reach_every_lightgbm_recipe(name, fixture_dataset, fixture_splits):
    """`gbm_params` (what `modalfuse tune` finds) and the learning rate reach every LightGBM
    a recipe fits: the final model and each fold's, stacking's parts and gbm_embed's trees."""
    cfg = TrainConfig(model=name, seed=0, num_boost_round=7, learning_rate=0.11, gbm_params=TUNED,
                      net=TINY_NET)
    engine = FoldEngine(fixture_dataset, fixture_splits, cfg,
                        training_labels(fixture_dataset, fixture_splits))
    fitted = [engine.fit(name), engine.fit(name, frozenset({engine.folds[0]}))]
    gbms = [g for m in fitted for g in lightgbm_parts(m)]
    assert gbms, f"recipe {name} says it fits LightGBM but none was found"
    for g in gbms:
        assert {k: g.params[k] for k in TUNED} == TUNED
        assert g.params["learning_rate"] == 0.11 and g.num_boost_round == 7
        dumped = g.booster_.dump_model()
        assert dumped["tree_info"] and max(t["num_leaves"] for t in dumped["tree_info"]) <= 5


def test_tuning_space_is_the_recipes_space():
    """A trial of family `gbm_tabular` trains the `gbm_tabular` recipe with its LightGBM space."""
    import optuna

    from modalfuse.training.tune import suggest_config

    params = {"family": "gbm_tabular", "num_boost_round": 150, "learning_rate": 0.05,
              "num_leaves": 9, "min_data_in_leaf": 5, "feature_fraction": 0.5, "lambda_l2": 1.0}
    cfg = suggest_config(optuna.trial.FixedTrial(params), ("gbm", "gbm_tabular"), TrainConfig())
    assert cfg.model == "gbm_tabular" and not cfg.use_image_stats
    assert cfg.gbm_params["num_leaves"] == 9 and cfg.num_boost_round == 150
