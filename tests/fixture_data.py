"""A small synthetic dataset in the built-in Pokémon format, made by the test suite itself.

Classes differ in sprite colour and shape and in their stats, so a model can learn them;
rows come in families of 1-3 that share a class, like evolution chains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from modalfuse.data.builders.pokemon import COLORS, EGG_GROUPS, pokemon_spec
from modalfuse.data.dataset import write_dataset
from modalfuse.features.image import encode_png, to_square_rgba

CLASSES = {  # type -> (rgb, shape, stat profile, colour, ability)
    "Fire": ((230, 80, 30), "circle", (60, 90, 50, 90, 50, 80), "Red", "Blaze"),
    "Water": ((40, 90, 220), "square", (80, 60, 80, 70, 80, 50), "Blue", "Torrent"),
    "Grass": ((50, 180, 60), "triangle", (60, 60, 60, 80, 80, 50), "Green", "Overgrow"),
    "Normal": ((170, 150, 120), "diamond", (90, 70, 60, 40, 50, 70), "Brown", "Run Away"),
}


def sprite(rng: np.random.Generator, rgb, shape: str) -> Image.Image:
    w = int(rng.integers(24, 70))
    canvas = int(rng.integers(w + 2, 120))
    img = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    x0 = int(rng.integers(0, canvas - w))
    y0 = int(rng.integers(0, canvas - w))
    col = tuple(int(np.clip(c + rng.normal(0, 18), 0, 255)) for c in rgb) + (255,)
    box = (x0, y0, x0 + w, y0 + w)
    if shape == "circle":
        d.ellipse(box, fill=col, outline=(20, 20, 20, 255), width=2)
    elif shape == "square":
        d.rectangle(box, fill=col, outline=(20, 20, 20, 255), width=2)
    elif shape == "triangle":
        d.polygon([(x0 + w // 2, y0), (x0, y0 + w), (x0 + w, y0 + w)], fill=col)
    else:
        d.polygon([(x0 + w // 2, y0), (x0 + w, y0 + w // 2), (x0 + w // 2, y0 + w),
                   (x0, y0 + w // 2)], fill=col)
    # a few darker pixels so hashes and CNNs have texture to see
    for _ in range(int(rng.integers(3, 12))):
        px, py = int(rng.integers(x0, x0 + w)), int(rng.integers(y0, y0 + w))
        if img.getpixel((px, py))[3]:
            d.ellipse((px - 2, py - 2, px + 2, py + 2), fill=(30, 30, 30, 255))
    return img


def make_fixture_dataset(out_dir: Path, n_families: int = 70, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    spec = pokemon_spec()
    rows, images, views = [], {}, []
    names = list(CLASSES)
    num = 0
    for fam in range(n_families):
        cls = names[fam % len(names)]
        rgb, shape, stats, colour, ability = CLASSES[cls]
        fam_id = num + 1
        for _stage in range(int(rng.integers(1, 4))):
            num += 1
            s = np.clip(np.array(stats) + rng.normal(0, 15, 6) + 10 * _stage, 5, 250).astype(int)
            img = sprite(rng, rgb, shape)
            fname = f"{num}.png"
            images[fname] = encode_png(to_square_rgba(img, 96))
            for view in ("back", "shiny"):
                v = sprite(rng, rgb, shape)
                rel = f"views/{num}/{view}_0.png"
                images[rel] = encode_png(to_square_rgba(v, 96))
                views.append({"id": num, "view": view, "frame": 0, "path": rel})
            noisy_colour = colour if rng.random() < 0.7 else COLORS[int(rng.integers(len(COLORS)))]
            rows.append({
                "id": num, "name": f"Mon{num}", "primary_type": cls, "secondary_type": None,
                "hp": int(s[0]), "atk": int(s[1]), "def": int(s[2]), "spa": int(s[3]),
                "spd": int(s[4]), "spe": int(s[5]),
                "height_m": float(np.round(rng.uniform(0.2, 3.0), 1)),
                "weight_kg": float(np.round(rng.uniform(1, 200), 1)),
                "female_ratio": None if rng.random() < 0.1 else 0.5,
                "color": noisy_colour,
                "egg_groups": "|".join(sorted(set(rng.choice(EGG_GROUPS, 2).tolist()))),
                "abilities": ability if rng.random() < 0.6 else "Pressure|Keen Eye",
                "generation": int(rng.integers(1, 6)),
                "is_legendary": bool(rng.random() < 0.05),
                "is_mythical": False,
                "family_id": fam_id,
                "image": fname,
            })
    table = pd.DataFrame(rows)
    return write_dataset(out_dir, spec, table, images, pd.DataFrame(views), {"fixture": f"seed {seed}"})


FRUITS = {"apple": ((200, 30, 30), 150, 12), "banana": ((230, 210, 40), 120, 18),
          "lime": ((60, 190, 50), 60, 4)}  # fruit -> (rgb, grams, sugar)


def make_fruit_dataset(root: Path, n_rows: int = 150, seed: int = 3) -> Path:
    """A table that is not Pokémon at all: `root/fruit.csv` (id `sku`, target `fruit`, image
    column `photo`, group `orchard`, five fields of every kind) and JPEG photos under
    `root/photos`, for `modalfuse data import`. Returns `root`."""
    from modalfuse.inference.reliability import fruit_photo

    rng = np.random.default_rng(seed)
    (root / "photos" / "batch1").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_rows):
        kind = list(FRUITS)[i % 3]
        rgb, grams, sweet = FRUITS[kind]
        name = f"batch1/f{i:03d}.jpg"
        (root / "photos" / name).write_bytes(fruit_photo(rng, rgb))
        rows.append({"sku": f"S{i:04d}", "fruit": kind, "photo": name,
                     "orchard": f"o{i // 2}",  # two photos per orchard lot: one group
                     "grams": float(grams + rng.normal(0, 15)),
                     "sugar": float(sweet + rng.normal(0, 2)),
                     "organic": bool(rng.random() < 0.5),
                     "origin": str(rng.choice(["ES", "IT", "CO"])),
                     "labels": "|".join(sorted(set(rng.choice(["fresh", "local", "sale"], 2))))})
    pd.DataFrame(rows).to_csv(root / "fruit.csv", index=False)
    return root
