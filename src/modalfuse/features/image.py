"""Image decoding and hand-made image features, shared by the dataset build and the Predictor.

`normalize_image` is the one function that turns any accepted image (PNG, JPEG, GIF,
WebP; first frame) into the square RGBA array the models see. The dataset build stores
its output and the Predictor recomputes it from whatever bytes a client sends, so a raw
GIF at serving time and the stored PNG give the same pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from modalfuse.errors import InvalidInput

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


class ImageError(InvalidInput):
    """An image that cannot be used: unreadable, empty, too large or of a refused format."""


_ASCII_WHITESPACE = b" \t\n\r\v\f"


def decode_base64_image(text: str) -> bytes:
    """Image bytes from base64 text; line-wrapped base64 (RFC 2045: 76 columns, CRLF or LF)
    is accepted, since ASCII whitespace is dropped before a strict decode."""
    try:
        raw = text.encode("ascii").translate(None, _ASCII_WHITESPACE)
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ImageError("image_base64 is not valid base64") from None


@contextmanager
def _image_errors(max_pixels: int) -> Iterator[None]:
    """Pillow's many failure types -> one ImageError that says what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image refused as a decompression bomb ({e}); the limit is "
                         f"{max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"bytes are not a readable image; allowed formats: {list(ALLOWED_FORMATS)}"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"image is corrupt or truncated: {e}") from None


def open_image_header(data: bytes, max_pixels: int = 4_000_000) -> Image.Image:
    """An image with only its header read: format and size are checked, no pixel decoded.

    Pillow's `Image.open` is lazy, so this costs microseconds whatever the image declares;
    it is what lets a request's pixels be counted before any of them are decoded.
    """
    if not data:
        raise ImageError("image is empty (0 bytes)")
    with _image_errors(max_pixels):
        img = Image.open(io.BytesIO(data))
        if img.format not in ALLOWED_FORMATS:
            raise ImageError(
                f"image format {img.format!r} is not accepted; allowed: {list(ALLOWED_FORMATS)}"
            )
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(
                f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels"
            )
    return img


def load_first_frame(img: Image.Image, max_pixels: int = 4_000_000) -> Image.Image:
    """Decode the first frame of an image opened by `open_image_header` (the costly step)."""
    with _image_errors(max_pixels):
        img.seek(0)
        img.load()
    return img


def open_image(data: bytes, max_pixels: int = 4_000_000) -> Image.Image:
    """Open the first frame of an image, refusing decompression bombs before decoding."""
    return load_first_frame(open_image_header(data, max_pixels), max_pixels)


def to_square_rgba(img: Image.Image, size: int) -> np.ndarray:
    """Crop to the opaque bounding box and centre it on a transparent size x size canvas.

    Sprites are pixel art whose opaque box is at most 96 px, so at size 96 nothing is
    resampled; anything larger (a user's photo) is scaled down to fit, keeping its aspect.
    """
    rgba = img.convert("RGBA")
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        raise ImageError("image has no opaque pixel (fully transparent)")
    rgba = rgba.crop(bbox)
    w, h = rgba.size
    if w > size or h > size:
        scale = size / max(w, h)
        rgba = rgba.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
        w, h = rgba.size
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(rgba, ((size - w) // 2, (size - h) // 2))
    return np.asarray(canvas, dtype=np.uint8).copy()


def normalize_image(data: bytes, size: int = 96, max_pixels: int = 4_000_000) -> np.ndarray:
    """Bytes of any accepted image -> (size, size, 4) uint8 RGBA, opaque content centred."""
    return to_square_rgba(open_image(data, max_pixels), size)


def gif_frames(data: bytes, count: int) -> list[Image.Image]:
    """`count` frames spread evenly over an animation (the first always included)."""
    img = open_image(data, max_pixels=10_000_000)
    n = getattr(img, "n_frames", 1)
    idx = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)}) if n > 1 else [0]
    out = []
    for i in idx:
        img.seek(i)
        out.append(img.convert("RGBA").copy())
    return out


def encode_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGBA array (how built datasets store their normalized images)."""
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ---- hand-made image features -------------------------------------------------------

HUE_BINS = 12
_HUE_NAMES = [f"img_hue_{i:02d}" for i in range(HUE_BINS)]
IMAGE_FEATURE_NAMES: list[str] = [
    *_HUE_NAMES,
    "img_frac_grey", "img_frac_dark", "img_frac_light",
    "img_mean_r", "img_mean_g", "img_mean_b",
    "img_std_r", "img_std_g", "img_std_b",
    "img_mean_s", "img_mean_v",
    "img_area", "img_bbox_w", "img_bbox_h", "img_aspect", "img_fill", "img_edge_density",
]


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    d = mx - mn
    h = np.zeros_like(mx)
    nz = d > 1e-9
    rm = nz & (mx == r)
    gm = nz & (mx == g) & ~rm
    bm = nz & ~rm & ~gm
    h[rm] = ((g[rm] - b[rm]) / d[rm]) % 6
    h[gm] = (b[gm] - r[gm]) / d[gm] + 2
    h[bm] = (r[bm] - g[bm]) / d[bm] + 4
    h = h / 6.0
    s = np.where(mx > 1e-9, d / np.maximum(mx, 1e-9), 0.0)
    return np.stack([h, s, mx], axis=-1)


def image_features(rgba: np.ndarray) -> np.ndarray:
    """Colour and shape statistics of the opaque pixels of one normalized image."""
    alpha = rgba[..., 3] > 0
    n = int(alpha.sum())
    size = rgba.shape[0]
    feats = np.zeros(len(IMAGE_FEATURE_NAMES), dtype=np.float64)
    if n == 0:
        return feats
    rgb = rgba[..., :3][alpha].astype(np.float64) / 255.0
    hsv = _rgb_to_hsv(rgb)
    chromatic = (hsv[:, 1] > 0.25) & (hsv[:, 2] > 0.2)
    hue_hist = np.bincount(
        np.minimum((hsv[chromatic, 0] * HUE_BINS).astype(int), HUE_BINS - 1),
        minlength=HUE_BINS,
    ) / n
    ys, xs = np.nonzero(alpha)
    bw = xs.max() - xs.min() + 1
    bh = ys.max() - ys.min() + 1
    # Edge density: share of opaque pixels whose 4-neighbourhood is not all opaque.
    pad = np.pad(alpha, 1)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:] & alpha
    feats[:] = [
        *hue_hist,
        float((~chromatic).mean()),
        float((hsv[:, 2] < 0.25).mean()),
        float(((hsv[:, 2] > 0.85) & (hsv[:, 1] < 0.2)).mean()),
        *rgb.mean(axis=0),
        *rgb.std(axis=0),
        float(hsv[:, 1].mean()),
        float(hsv[:, 2].mean()),
        n / (size * size),
        bw / size,
        bh / size,
        bw / bh,
        n / (bw * bh),
        1.0 - interior.sum() / n,
    ]
    return feats
