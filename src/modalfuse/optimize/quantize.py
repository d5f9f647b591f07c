"""INT8 quantization of every ONNX network in a bundle with ONNX Runtime: static (QDQ) and dynamic.

Static quantization is calibrated on training-split rows turned into features by the
bundle's own Predictor; the test split is never read. The result is a new bundle with the
same model kinds (INT8 ONNX inside `onnx_net` parts), so nothing downstream changes.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import InvalidInput
from modalfuse.inference.bundle import ModelBundle
from modalfuse.models.neural import OnnxNetModel, net_feeds
from modalfuse.optimize import derive_bundle, fresh_copy, onnx_parts, training_batch

MODES = ("static", "dynamic")
log = logging.getLogger(__name__)


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over prepared feeds, a chunk at a time."""

    def __init__(self, feeds: dict[str, np.ndarray], chunk: int = 16):
        n = len(next(iter(feeds.values())))
        self._chunks = iter([{k: v[i:i + chunk] for k, v in feeds.items()}
                             for i in range(0, n, chunk)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._chunks, None)


def quantize_onnx(onnx_bytes: bytes, mode: str, calibration: dict[str, np.ndarray] | None = None,
                  per_channel: bool = True) -> bytes:
    """INT8 ONNX bytes of an FP32 network. `static` needs calibration feeds (QDQ format,
    uint8 activations, int8 per-channel weights); `dynamic` quantizes weights only."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise InvalidInput(f"unknown quantization mode {mode!r}; choose one of {list(MODES)}")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        # Shape inference + graph optimization first, as ONNX Runtime recommends before quantizing.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if mode == "static":
            if calibration is None:
                raise InvalidInput("static quantization needs calibration feeds from training rows")
            quantize_static(str(pre), str(out), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        else:
            quantize_dynamic(str(pre), str(out), per_channel=per_channel,
                             weight_type=QuantType.QInt8)
        return out.read_bytes()


def quantize_bundle(source: ModelBundle, ds: Dataset, splits: Splits, out: Path,
                    mode: str = "static", calibration_rows: int = 256, seed: int = 0) -> ModelBundle:
    """A new bundle whose every ONNX network is INT8 (static QDQ or dynamic)."""
    if mode not in MODES:
        raise InvalidInput(f"unknown quantization mode {mode!r}; choose one of {list(MODES)}")
    copy = fresh_copy(source)
    parts = list(onnx_parts(copy.model))
    if not parts:
        raise InvalidInput(f"bundle {source.model_version} has no ONNX network to quantize "
                           f"(model kind {source.meta['model']['kind']!r}); quantization applies to "
                           "neural models and fused models that hold one")
    ids, batch = (training_batch(source, ds, splits, calibration_rows, seed) if mode == "static"
                  else (np.array([]), None))
    for path, part in parts:
        calib = net_feeds(batch, part.inputs, part.image_size) if batch is not None else None
        log.info("quantizing %s (%s)", path, mode)
        _replace(part, quantize_onnx(part.onnx_bytes, mode, calib))
    how = {"method": f"int8_{mode}", "parts": [p for p, _ in parts],
           "calibration_rows": len(ids), "calibration_split": "train" if len(ids) else None}
    return derive_bundle(source, copy.model, out, how)


def _replace(part: OnnxNetModel, onnx_bytes: bytes) -> None:
    part.onnx_bytes = onnx_bytes
    part._session = None  # the next call opens a session on the new bytes
