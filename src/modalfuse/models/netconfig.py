"""Settings of the neural models (image CNN, intermediate fusion); torch-free so configs load anywhere."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

VIEW_KINDS = ("front", "back", "shiny", "back_shiny")
DEVICES = ("cpu", "cuda", "auto")


class NetConfig(BaseModel):
    """Settings of a neural model (image CNN or intermediate fusion), validated; readable without torch."""

    image_size: int = Field(default=32, ge=8, le=256, description="pixels the network sees")
    epochs: int = Field(default=24, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    width: int = Field(default=16, ge=4, description="channels of the first conv block")
    embed_dim: int = Field(default=64, ge=4)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    label_smoothing: float = Field(default=0.05, ge=0, lt=1)
    augment: bool = True
    views: list[str] = Field(default_factory=lambda: ["front", "back"],
                             description="extra views of training rows to learn from")
    views_per_epoch: int = Field(default=2, ge=1,
                                 description="random views of each training row per epoch")
    tab_hidden: int = Field(default=128, ge=4)
    tab_dropout: float = Field(default=0.3, ge=0, lt=1)
    device: str = "cpu"
    checkpoint: Path | None = Field(default=None,
                                    description="local weights to start the image trunk from")

    @field_validator("views")
    @classmethod
    def _known_views(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(VIEW_KINDS))
        if bad:
            raise ValueError(f"unknown views {bad}; known: {list(VIEW_KINDS)}")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in DEVICES:
            raise ValueError(f"unknown device {v!r}; choose one of {list(DEVICES)}")
        return v
