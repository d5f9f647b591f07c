"""Normalized RGBA sprites -> the float arrays neural models read, shared by training and ONNX serving.

Torch-free on purpose: the training loop (PyTorch) and the Predictor (ONNX Runtime) call
this same function, so a network never sees pixels prepared two different ways.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_CHANNELS = 4  # premultiplied RGB + alpha: the transparent background reads as 0


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = x.shape
    if h == size and w == size:
        return x
    if h % size == 0 and w % size == 0:
        # An integer factor: an exact block mean (area resampling), cheap and deterministic.
        fh, fw = h // size, w // size
        return x.reshape(n, size, fh, size, fw, c).mean(axis=(2, 4), dtype=np.float32)
    out = np.empty((n, size, size, c), dtype=np.float32)
    for i in range(n):
        for k in range(c):
            out[i, :, :, k] = np.asarray(Image.fromarray(x[i, :, :, k], "F").resize(
                (size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return out


def image_tensor(images: np.ndarray, size: int) -> np.ndarray:
    """(n, S, S, 4) uint8 RGBA -> (n, 4, size, size) float32 in [0, 1], RGB premultiplied by alpha."""
    if images.ndim != 4 or images.shape[-1] != IMAGE_CHANNELS:
        raise ValueError(f"images must be (n, height, width, 4) RGBA, got shape {images.shape}")
    x = images.astype(np.float32) / 255.0
    # Premultiply before resampling so transparent pixels' hidden colour cannot bleed in.
    x[..., :3] *= x[..., 3:4]
    x = _resize(x, size)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
