"""Model and health routes: what is served, and whether it is up."""

from __future__ import annotations

from fastapi import APIRouter

from modalfuse.serve.deps import ServedModelDep
from modalfuse.serve.schemas import Health, ModelInfo

router = APIRouter()


@router.get("/health", response_model=Health, tags=["ops"])
def health(served: ServedModelDep) -> Health:
    return Health(status="ok", model_version=served.version)


@router.get("/v1/model", response_model=ModelInfo, tags=["model"])
def model_info(served: ServedModelDep) -> ModelInfo:
    """What is served: version, inputs, labels, metrics, and where it came from (registry/bundle)."""
    predictor = served.predictor
    meta = predictor.bundle.meta
    spec = predictor.spec
    return ModelInfo(
        model_version=served.version,
        dataset=meta.get("dataset", {}),
        labels=predictor.labels,
        input_schema=[f.model_dump(mode="json") for f in spec.fields],
        image={"field": "image_base64", "size": spec.image_size,
               "formats": ["PNG", "JPEG", "GIF", "WEBP", "BMP"],
               "note": "first frame; cropped to its opaque box and centred on a square"},
        metrics=meta.get("metrics", {}),
        created_at=meta.get("created_at"),
        modalities=predictor.modalities,
        trust={k: v for k, v in meta.get("companions", {}).items() if k != "models"},
        source=dict(served.source),  # swapped with the model: always the served one's
    )
