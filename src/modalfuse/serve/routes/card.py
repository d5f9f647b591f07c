"""The model card of the served model, as markdown."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from modalfuse.serve.deps import ServedModelDep
from modalfuse.tracking.model_card import bundle_card

router = APIRouter(tags=["model"])


@router.get("/v1/model/card", response_class=PlainTextResponse,
            responses={200: {"content": {"text/markdown": {}}}},
            summary="The served model's card: data, metrics, split audit, use and limits")
def model_card(served: ServedModelDep) -> PlainTextResponse:
    card = bundle_card(served.predictor.bundle)
    source = served.source  # swapped with the model: always the served one's
    if source.get("name"):
        card = (f"> Served from `{source.get('uri')}`: registered model `{source['name']}` "
                f"version {source['version']} (run `{source.get('run_id')}`).\n\n" + card)
    return PlainTextResponse(card, media_type="text/markdown; charset=utf-8")
