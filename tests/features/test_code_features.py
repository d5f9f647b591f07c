"""Code tier: image decoding, record parsing and the tabular encoder."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from modalfuse.data.builders.pokemon import pokemon_spec
from modalfuse.errors import NotFitted
from modalfuse.features.image import (
    IMAGE_FEATURE_NAMES,
    ImageError,
    image_features,
    normalize_image,
)
from modalfuse.features.tabular import (
    RecordError,
    TabularEncoder,
    parse_record,
    records_frame,
)

SPEC = pokemon_spec()


def sprite_image(size=(40, 30), offset=(5, 7), canvas=(80, 60)) -> Image.Image:
    img = Image.new("RGBA", canvas, (0, 0, 0, 0))
    block = Image.new("RGBA", size, (200, 40, 40, 255))
    img.paste(block, offset)
    return img


def as_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def valid_record(**over) -> dict:
    rec = {"hp": 45, "atk": 49, "def": 49, "spa": 65, "spd": 65, "spe": 45, "height_m": 0.7,
           "weight_kg": 6.9, "female_ratio": 0.125, "color": "Green",
           "egg_groups": ["Monster", "Grass"], "abilities": "Overgrow|Chlorophyll",
           "generation": 1, "is_legendary": False, "is_mythical": False}
    rec.update(over)
    return rec


def test_gif_and_png_normalize_to_the_same_pixels():
    img = sprite_image()
    png = normalize_image(as_bytes(img, "PNG"))
    gif = normalize_image(as_bytes(img, "GIF", transparency=0))
    assert png.shape == (96, 96, 4) and png.dtype == np.uint8
    assert np.array_equal(png[..., 3] > 0, gif[..., 3] > 0)
    # Content is cropped to its opaque box and centred whatever the canvas offset was.
    moved = normalize_image(as_bytes(sprite_image(offset=(30, 20)), "PNG"))
    assert np.array_equal(png, moved)


def test_large_image_is_scaled_to_fit_and_jpeg_is_accepted():
    big = Image.new("RGB", (300, 150), (10, 200, 10))
    out = normalize_image(as_bytes(big, "JPEG"))
    assert out.shape == (96, 96, 4)
    assert (out[..., 3] > 0).sum() == 96 * 48  # aspect kept, fully opaque


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not an image at all", "not a readable image"),
    (as_bytes(sprite_image(), "PNG")[:60], "corrupt or truncated"),
    (as_bytes(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"), "no opaque pixel"),
])
def test_bad_images_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        normalize_image(data)


def test_decompression_bomb_refused_before_decoding():
    huge = as_bytes(Image.new("L", (3000, 3000), 0), "PNG")  # tiny file, 9 Mpx
    with pytest.raises(ImageError, match="pixels"):
        normalize_image(huge, max_pixels=4_000_000)


def test_image_features_are_finite_and_see_colour():
    red = normalize_image(as_bytes(sprite_image(), "PNG"))
    f = image_features(red)
    assert f.shape == (len(IMAGE_FEATURE_NAMES),) and np.isfinite(f).all()
    named = dict(zip(IMAGE_FEATURE_NAMES, f, strict=True))
    assert named["img_mean_r"] > named["img_mean_g"]


def test_parse_record_accepts_lists_and_joined_strings():
    out = parse_record(SPEC, valid_record())
    assert out["egg_groups"] == "Monster|Grass" and out["abilities"] == "Overgrow|Chlorophyll"
    assert out["hp"] == 45.0 and out["is_legendary"] is False


@pytest.mark.parametrize("field, value, message", [
    ("hp", 999, "between 1.0 and 255.0"),
    ("hp", float("nan"), "must be a finite number, got NaN"),
    ("hp", float("inf"), "finite"),
    ("hp", "many", "must be a number"),
    ("color", "Turquoise", "must be one of"),
    ("egg_groups", ["Monster", "Dinosaur"], "unknown value"),
    ("is_legendary", "perhaps", "true or false"),
])
def test_parse_record_names_field_and_allowed_values(field, value, message):
    with pytest.raises(RecordError) as e:
        parse_record(SPEC, valid_record(**{field: value}))
    assert field in e.value.errors and message in e.value.errors[field]


def test_unknown_and_missing_fields_are_reported():
    rec = valid_record(favourite_food="berries")
    del rec["atk"]
    with pytest.raises(RecordError) as e:
        parse_record(SPEC, rec)
    assert set(e.value.errors) == {"favourite_food", "atk"}


def test_encoder_learns_vocab_from_training_rows_only():
    train = records_frame(SPEC, [parse_record(SPEC, valid_record(color=c)) for c in
                                 ["Green", "Green", "Red", "Red", "Blue"]])
    enc = TabularEncoder(SPEC, min_count=2)
    with pytest.raises(NotFitted, match="TabularEncoder is not fitted"):
        enc.transform(train)
    enc.fit(train)
    assert enc.vocab_["color"] == ["Green", "Red", "__other__"]  # Blue seen once -> other
    unseen = records_frame(SPEC, [parse_record(SPEC, valid_record(color="Pink"))])
    x = pd.Series(enc.transform(unseen)[0], index=enc.feature_names_)
    assert x["color=__other__"] == 1.0 and x["color=Green"] == 0.0
    dense = enc.transform_dense(unseen)
    assert np.isfinite(dense).all()
    again = TabularEncoder.from_dict(SPEC, enc.to_dict())
    assert np.array_equal(again.transform(unseen), enc.transform(unseen), equal_nan=True)
