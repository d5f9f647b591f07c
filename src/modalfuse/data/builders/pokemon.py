"""The built-in dataset: Pokémon primary type from the gen-5 sprite plus the Pokédex record.

One row per species of national dex 1-649 (the species with a gen-5 animated sprite).
Forms (megas, regional forms, Castform's weathers, Arceus' plates) are left out: their
sprites in the pinned tarball are not keyed by Pokédex name, and 20 of them change the
primary type while looking nearly identical to the base species.
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from modalfuse.data.dataset import write_dataset
from modalfuse.errors import InvalidInput
from modalfuse.features.image import encode_png, gif_frames, normalize_image, to_square_rgba
from modalfuse.progress import SILENT, ProgressReporter, steps
from modalfuse.spec import DatasetSpec, DatasetWords, FieldKind, FieldSpec

DEX_JSON = "poke_env/data/static/pokedex/gen9pokedex.json"
SPRITE_ROOT = "package/sprites/pokemon/versions/generation-v/black-white/animated/"
VIEW_PATHS = {"front": "", "back": "back/", "shiny": "shiny/", "back_shiny": "back/shiny/"}
MAX_DEX = 649
IMAGE_SIZE = 96  # the largest opaque sprite box in gen 5 is 96 px: no pixel is resampled
FRAMES_PER_VIEW = 4

TYPES = [
    "Bug", "Dark", "Dragon", "Electric", "Fairy", "Fighting", "Fire", "Flying", "Ghost",
    "Grass", "Ground", "Ice", "Normal", "Poison", "Psychic", "Rock", "Steel", "Water",
]
COLORS = ["Black", "Blue", "Brown", "Gray", "Green", "Pink", "Purple", "Red", "White", "Yellow"]
EGG_GROUPS = [
    "Amorphous", "Bug", "Ditto", "Dragon", "Fairy", "Field", "Flying", "Grass",
    "Human-Like", "Mineral", "Monster", "Undiscovered", "Water 1", "Water 2", "Water 3",
]
STATS = {"hp": "HP", "atk": "Attack", "def": "Defense", "spa": "Sp. Attack",
         "spd": "Sp. Defense", "spe": "Speed"}


def pokemon_spec() -> DatasetSpec:
    """The DatasetSpec of the built-in Pokémon dataset (fields, target, group and image columns)."""
    fields = [
        FieldSpec(name=k, kind=FieldKind.numeric, required=True, min=1, max=255,
                  description=f"base {v}")
        for k, v in STATS.items()
    ] + [
        FieldSpec(name="height_m", kind=FieldKind.numeric, required=True, min=0.05, max=50,
                  description="height in metres"),
        FieldSpec(name="weight_kg", kind=FieldKind.numeric, required=True, min=0.05, max=1000,
                  description="weight in kilograms"),
        FieldSpec(name="female_ratio", kind=FieldKind.numeric, min=0, max=1,
                  description="share of females; empty for genderless species"),
        FieldSpec(name="color", kind=FieldKind.categorical, required=True, categories=COLORS,
                  description="Pokédex colour"),
        FieldSpec(name="egg_groups", kind=FieldKind.multi, categories=EGG_GROUPS,
                  description="egg groups joined by '|'"),
        FieldSpec(name="abilities", kind=FieldKind.multi,
                  description="abilities (regular and hidden) joined by '|'"),
        FieldSpec(name="generation", kind=FieldKind.numeric, required=True, min=1, max=9,
                  description="generation that introduced the species"),
        FieldSpec(name="is_legendary", kind=FieldKind.boolean, description="legendary"),
        FieldSpec(name="is_mythical", kind=FieldKind.boolean, description="mythical"),
    ]
    return DatasetSpec(
        name="pokemon",
        id_column="id",
        target="primary_type",
        image_column="image",
        group_column="family_id",
        display_column="name",
        slice_field="generation",
        fields=fields,
        views_table="views.parquet",
        image_size=IMAGE_SIZE,
        min_class_count=2,
        description=(
            "Pokémon primary type (gen 9 Pokédex) from the gen-5 front sprite and the "
            "Pokédex record, national dex 1-649."
        ),
        words=DatasetWords(image_noun="sprite", record_noun="Pokédex record",
                           row_noun="species", group_noun="family"),
    )


def to_id(name: str) -> str:
    """Pokédex key of a display name (lowercase letters and digits only)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def generation_of(num: int) -> int:
    """The game generation a National Pokédex number belongs to."""
    for gen, last in enumerate((151, 251, 386, 493, 649), start=1):
        if num <= last:
            return gen
    return 6


def family_ids(dex: dict[str, dict]) -> dict[str, int]:
    """Evolution family of every Pokédex key: the smallest dex number in its chain.

    Chains are joined through every prevo/evos link of every entry, forms included
    (a form counts as its base species), so species linked only through a later-gen
    evolution or a regional form still share one family: stricter grouping is safer.
    """
    parent: dict[str, str] = {}

    def base_key(key: str) -> str:
        entry = dex.get(key, {})
        return to_id(entry["baseSpecies"]) if "baseSpecies" in entry else key

    def find(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    for key, entry in dex.items():
        me = base_key(key)
        find(me)
        links: Iterable[str] = [*entry.get("evos", []), *([entry["prevo"]] if "prevo" in entry else [])]
        for other in links:
            union(me, base_key(to_id(other)))
    members: dict[str, list[int]] = {}
    for key in dex:
        num = dex[key].get("num", 0)
        if num > 0:
            members.setdefault(find(base_key(key)), []).append(num)
    root_num = {root: min(nums) for root, nums in members.items()}
    return {key: root_num.get(find(base_key(key)), dex[key].get("num", 0)) for key in dex}


def read_pokedex(wheel: Path) -> dict[str, dict]:
    """The Pokédex JSON inside the pinned poke-env wheel."""
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read(DEX_JSON))


def pokedex_table(dex: dict[str, dict]) -> pd.DataFrame:
    """One table row per Pokédex species with its fields, target and family id."""
    families = family_ids(dex)
    rows = []
    for key, e in dex.items():
        num = e.get("num", 0)
        if not (1 <= num <= MAX_DEX) or "baseSpecies" in e or "forme" in e:
            continue
        tags = set(e.get("tags", []))
        gender = e.get("genderRatio")
        if "gender" in e:
            female = {"F": 1.0, "M": 0.0, "N": None}[e["gender"]]
        elif gender:
            female = float(gender["F"])
        else:
            female = 0.5  # the Pokédex omits the ratio when it is even
        abilities = [a for _, a in sorted(e["abilities"].items())]
        rows.append({
            "id": num,
            "name": e["name"],
            "primary_type": e["types"][0],
            "secondary_type": e["types"][1] if len(e["types"]) > 1 else None,
            **{k: int(e["baseStats"][k]) for k in STATS},
            "height_m": float(e["heightm"]),
            "weight_kg": float(e["weightkg"]),
            "female_ratio": female,
            "color": e["color"],
            "egg_groups": "|".join(e.get("eggGroups", [])),
            "abilities": "|".join(abilities),
            "generation": generation_of(num),
            "is_legendary": bool(tags & {"Sub-Legendary", "Restricted Legendary"}),
            "is_mythical": "Mythical" in tags,
            "family_id": families[key],
            "image": f"{num}.png",
        })
    return pd.DataFrame(rows).sort_values("id").reset_index(drop=True)


def read_sprites(tgz: Path, ids: set[int]) -> dict[tuple[int, str], bytes]:
    """GIF bytes of every wanted (id, view), read in one pass over the tarball."""
    pattern = re.compile(
        re.escape(SPRITE_ROOT) + r"(?P<view>(?:back/)?(?:shiny/)?)(?P<id>\d+)\.gif$"
    )
    by_prefix = {v: k for k, v in VIEW_PATHS.items()}
    out: dict[tuple[int, str], bytes] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            m = pattern.match(member.name)
            if not m or int(m["id"]) not in ids or m["view"] not in by_prefix:
                continue
            f = tar.extractfile(member)
            if f is not None:
                out[(int(m["id"]), by_prefix[m["view"]])] = f.read()
    return out


# The stages of a build, each a `build` step to the reporter.
BUILD_STAGES = ("reading the Pokédex", "reading the sprite tarball", "sprites -> PNG",
                "validating and writing the dataset")


def build_pokemon(dex_wheel: Path, sprites_tgz: Path, out_dir: Path,
                  sources: dict[str, str] | None = None,
                  reporter: ProgressReporter = SILENT) -> Path:
    """Build the dataset folder (table, sprites, views, spec, manifest) from the two sources;
    each stage is a `build` step to `reporter`, each sprite converted a `sprite` step."""
    def stage(done: int) -> None:
        name = BUILD_STAGES[min(done, len(BUILD_STAGES) - 1)]
        reporter.on_step("build", name, done, len(BUILD_STAGES))

    spec = pokemon_spec()
    stage(0)
    table = pokedex_table(read_pokedex(dex_wheel))
    stage(1)
    sprites = read_sprites(sprites_tgz, set(table["id"]))
    missing = sorted(i for i in table["id"] if (i, "front") not in sprites)
    if missing:
        raise InvalidInput(f"{len(missing)} species have no front sprite in the tarball: {missing[:20]}")
    images: dict[str, bytes] = {}
    views = []
    stage(2)
    for (num, view), gif in steps(sorted(sprites.items()), reporter, "sprite", "sprites -> PNG"):
        if view == "front":
            images[f"{num}.png"] = encode_png(normalize_image(gif, IMAGE_SIZE, 10_000_000))
        for k, frame in enumerate(gif_frames(gif, FRAMES_PER_VIEW)):
            if frame.getchannel("A").getbbox() is None:
                continue  # a blank frame in an animation: no view to learn from
            rel = f"views/{num}/{view}_{k}.png"
            images[rel] = encode_png(to_square_rgba(frame, IMAGE_SIZE))
            views.append({"id": num, "view": view, "frame": k, "path": rel})
    stage(3)
    out = write_dataset(out_dir, spec, table, images, pd.DataFrame(views), sources or {})
    stage(4)
    return out
