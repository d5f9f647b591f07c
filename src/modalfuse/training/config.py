"""TrainConfig: everything one training run reads, with its defaults (the recipe, LightGBM and
network settings, the seed)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from modalfuse.models.netconfig import NetConfig


class TrainConfig(BaseModel):
    """The settings of one training run; `model` names a recipe of `training.recipes`."""

    model: str = Field(default="gbm", description="the recipe to train (`modalfuse train --help` "
                                                  "lists them)")
    exclude_fields: list[str] = Field(default_factory=list)
    use_image_stats: bool = True
    num_boost_round: int = Field(default=300, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    gbm_params: dict[str, float | int] = Field(default_factory=dict,
                                               description="more LightGBM parameters (HPO)")
    class_weight: str | None = "balanced"
    min_category_count: int = Field(default=2, ge=1)
    seed: int = 42
    cv: bool = True
    net: NetConfig = Field(default_factory=NetConfig, description="neural model settings")
