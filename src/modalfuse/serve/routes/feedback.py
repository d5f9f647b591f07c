"""Ground-truth feedback: `POST /v1/feedback` gives earlier predictions their true labels.

Needs the API key. Rows name a `prediction_id` that a prediction route answered; a label is
stored for it in the prediction log's file (synchronously: the rows are few and small), and
the live performance gauges are refreshed. The request is validated as a whole first:

- a label that is not one of the labels of the model that made the prediction: 422 naming
  the row, the value and the allowed labels; nothing is stored;
- a different label for an id that has one already: 409 naming the id and both labels,
  unless `replace` is true; nothing is stored;
- an id that is not in the log (never made, pruned by retention, logged by a replica with
  another log file): that row is answered as `unknown` and the others are stored (200), so
  a client can send labels days later and resend what was not found;
- the same label again: `unchanged`, one record (idempotent, safe to retry).
"""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, HTTPException, Request

from modalfuse.monitor.performance import PerformanceThresholds
from modalfuse.monitor.predlog import FeedbackConflict, FeedbackError, PredictionLog
from modalfuse.serve.deps import SettingsDep
from modalfuse.serve.schemas import FeedbackRequest, FeedbackResponse, FeedbackResult
from modalfuse.serve.security import AuthDep

router = APIRouter(prefix="/v1", tags=["feedback"])


def prediction_log(request: Request) -> PredictionLog:
    """The app's prediction log, or a 409 when prediction logging is off."""
    plog = getattr(request.app.state, "prediction_log", None)
    if plog is None:
        raise HTTPException(409, detail="prediction logging is off (MODALFUSE_LOG_PREDICTIONS), "
                                        "so there are no predictions to give feedback on")
    return plog


def refused(e: FeedbackError) -> HTTPException:
    """A refused feedback request as an HTTP error: 409 for a conflict, else 422; one entry
    per bad row."""
    conflict = isinstance(e, FeedbackConflict)
    return HTTPException(409 if conflict else 422, detail=[
        {"loc": ["body", "feedback", i, "label"], "type": "conflict" if conflict else "value_error",
         "msg": msg} for i, msg in e.errors.items()])


@router.post("/feedback", response_model=FeedbackResponse,
             summary="Give earlier predictions their true labels (ground truth)",
             description="Unknown ids come back as `unknown` rows; nothing is stored when a "
                         "row has a bad label (422) or a conflicting one (409).",
             responses={409: {"description": "a different label for an id that has one, "
                                             "without `replace`; or logging is off"},
                        413: {"description": "more rows than MODALFUSE_MAX_BATCH_ROWS"},
                        422: {"description": "a label that the prediction's model does not "
                                             "have, or a malformed body"}})
def feedback(body: FeedbackRequest, request: Request, _: AuthDep,
             settings: SettingsDep) -> FeedbackResponse:
    plog = prediction_log(request)
    if len(body.feedback) > settings.max_batch_rows:
        raise HTTPException(413, detail=f"feedback has {len(body.feedback)} rows; the limit is "
                                        f"{settings.max_batch_rows} (MODALFUSE_MAX_BATCH_ROWS); "
                                        "send it in several requests")
    plog.wait_written()  # a prediction made a moment ago may still be queued for the file
    try:
        outcomes = plog.add_feedback([(f.prediction_id, f.label) for f in body.feedback],
                                     replace=body.replace)
    except FeedbackError as e:
        raise refused(e) from None
    except sqlite3.OperationalError as e:  # locked or busy: the server's state, not the input
        raise HTTPException(503, detail=f"the prediction log is busy ({e}); retry",
                            headers={"Retry-After": "1"}) from None
    metrics = request.app.state.metrics
    metrics.observe_feedback(outcomes)
    metrics.refresh_performance(plog, PerformanceThresholds.from_settings(settings),
                                [o.model_version for o in outcomes
                                 if o.model_version and o.status in ("stored", "replaced")])
    counts = {k: sum(1 for o in outcomes if o.status == k)
              for k in ("stored", "unchanged", "replaced", "unknown")}
    return FeedbackResponse(**counts, results=[
        FeedbackResult(prediction_id=o.prediction_id, label=o.label, status=o.status,
                       model_version=o.model_version, previous_label=o.previous_label)
        for o in outcomes])
