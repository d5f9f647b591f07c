"""The MLflow face of a model bundle: a pyfunc whose `predict` goes through the Predictor.

`mlflow.pyfunc.load_model("models:/NAME@champion")` (and `mlflow models serve`) therefore
score exactly like the API: the bundle travels as the model's artifact and nothing here
re-implements preprocessing.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from modalfuse.errors import InvalidInput
from modalfuse.features.image import ImageError, decode_base64_image
from modalfuse.inference.predictor import Predictor, table_records

# The key of the bundle folder among the pyfunc model's artifacts.
BUNDLE_ARTIFACT = "bundle"
IMAGE_COLUMN = "image_base64"


class BundlePyfunc(PythonModel):
    """Input: one row per record, the spec's fields as columns plus `image_base64`.

    No MLflow signature: MLflow's schema check would refuse integers for float fields,
    while the Predictor validates every row itself and reports bad ones as errors.

    An empty `image_base64` cell is scored from the fields alone; one that is not base64 is
    an error row, never scored without its image.

    Output: one row per input row with `label`, `probabilities` (JSON) and `error` (JSON
    of field -> message for a row that could not be scored, else empty).
    """

    def load_context(self, context: Any) -> None:
        """Build the Predictor from the bundle that travels as the model's artifact."""
        self.predictor = Predictor.from_path(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None
                ) -> pd.DataFrame:
        """Score a table of records through the Predictor; bad rows get an `error` instead."""
        if IMAGE_COLUMN not in model_input.columns:
            raise InvalidInput(f"input needs an {IMAGE_COLUMN!r} column (the image in base64); "
                               f"columns are {list(model_input.columns)}")
        records = table_records(self.predictor.spec, model_input)
        images: list[bytes | None] = []
        bad: dict[int, dict[str, str]] = {}
        for i, value in enumerate(model_input[IMAGE_COLUMN]):
            if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)) \
                    or (isinstance(value, str) and value.strip() == ""):
                images.append(None)  # no image: scored from the fields alone
                continue
            try:
                images.append(decode_base64_image(str(value)))
            except ImageError:
                images.append(None)
                bad[i] = {IMAGE_COLUMN: "not valid base64"}
        keep = [i for i in range(len(records)) if i not in bad]
        scored = self.predictor.predict([records[i] for i in keep], [images[i] for i in keep])
        results: list[dict[str, Any]] = [{"error": bad.get(i, {})} for i in range(len(records))]
        for i, res in zip(keep, scored, strict=True):
            results[i] = res
        rows = []
        for res in results:
            rows.append({
                "label": res.get("label"),
                "probabilities": json.dumps(res["probabilities"]) if "probabilities" in res else "",
                "error": json.dumps(res["error"]) if "error" in res else "",
                "model_version": self.predictor.model_version,
            })
        return pd.DataFrame(rows)
