"""docs/own-data.md, run as written: a table and a folder of `<id>.png` images to a served model.

The test writes a small product catalogue (four categories, makers as groups, images named
after the id), then runs every command of the page's bash blocks in order, in a shell, with the
installed `modalfuse`: `serve` in the background on a free port, `curl` as the same request
from Python. It checks what each step promises, that the API and batch scoring agree, and
that no output names the built-in dataset.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-data.md"
BUILT_IN_WORDS = ("pokemon", "pokémon", "pokédex", "pokedex", "sprite", "species", "shiny")
CATEGORIES = {  # category: (base colour, price, weight in g, materials)
    "mug": ((180, 60, 50), 12.0, 340.0, ["ceramic", "glass"]),
    "plant": ((50, 150, 60), 25.0, 900.0, ["clay", "plastic"]),
    "lamp": ((220, 190, 60), 45.0, 1500.0, ["metal", "glass"]),
    "book": ((60, 80, 170), 18.0, 450.0, ["paper"]),
}
ROWS = 128
FIRST_ID = "p7c01e2"  # the id the page's `modalfuse example` line asks for


def product_photo(rng: np.random.Generator, category: str) -> Image.Image:
    """A product shot: the category's shape in a varied colour and place, on a backdrop with its
    own light gradient and blotches (a table, a wall, a shelf). Shots on one plain template
    would chain into one near-duplicate group: the pitfall docs/own-data.md describes."""
    base = np.array(CATEGORIES[category][0])
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    a, b = rng.normal(0, 1, 2)
    light = (a * xx + b * yy)[..., None] * rng.normal(0, 60, 3)
    blotches = np.kron(rng.normal(0, 40, (4, 4, 3)), np.ones((16, 16, 1)))
    backdrop = rng.uniform(120, 240, 3) + light + blotches + rng.normal(0, 10, (64, 64, 3))
    img = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
    d = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 35, 3), 0, 255))
    s = int(rng.integers(22, 40))
    x, y = int(rng.integers(0, 64 - s)), int(rng.integers(0, 64 - s))
    if category == "mug":
        d.rectangle((x, y, x + s * 2 // 3, y + s), fill=colour)
        d.ellipse((x + s * 2 // 3 - 4, y + s // 4, x + s, y + s * 3 // 4), outline=colour, width=4)
    elif category == "plant":
        d.ellipse((x, y, x + s, y + s * 2 // 3), fill=colour)
        d.rectangle((x + s // 3, y + s * 2 // 3, x + s * 2 // 3, y + s), fill=(120, 70, 40))
    elif category == "lamp":
        d.polygon([(x, y + s // 2), (x + s, y + s // 2), (x + s // 2, y)], fill=colour)
        d.rectangle((x + s // 2 - 2, y + s // 2, x + s // 2 + 2, y + s), fill=(80, 80, 80))
    else:
        d.rectangle((x, y, x + s * 3 // 4, y + s), fill=colour, outline=(20, 20, 20))
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0))))


def write_shop(root: Path) -> pd.DataFrame:
    """`shop/items.csv` and `shop/images/<id>.png` (every fifth one a JPEG): no image column."""
    rng = np.random.default_rng(11)
    images = root / "shop" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(ROWS):
        category = list(CATEGORIES)[i % len(CATEGORIES)]
        _, price, weight, materials = CATEGORIES[category]
        rid = FIRST_ID if i == 0 else f"p{rng.integers(16**6):06x}"
        photo = product_photo(rng, category)
        if i % 5 == 4:
            photo.save(images / f"{rid}.jpg", quality=90)
        else:
            photo.save(images / f"{rid}.png")
        rows.append({
            "id": rid, "category": category, "maker": f"m{i // 4 % 29:02d}",
            "price": round(float(price * rng.lognormal(0, 0.35)), 2),
            "weight_g": round(float(weight * rng.lognormal(0, 0.3))),
            "material": str(rng.choice(materials)) if rng.random() < 0.8 else "mixed",
            "tags": "|".join(sorted(set(rng.choice(["gift", "sale", "new", "eco"], 2)))),
            "in_stock": bool(rng.random() < 0.7),
        })
    table = pd.DataFrame(rows)
    assert table["id"].is_unique
    table.to_csv(root / "shop" / "items.csv", index=False)
    return table


def page_commands(doc: Path) -> list[str]:
    """Every line of the page's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    """Until `url` answers 200, or fail with the server's output."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server stopped: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {seconds} s")


def curl_as_python(line: str, port: int, cwd: Path) -> dict:
    """The page's `curl URL -H ... -d @FILE` line, sent from Python to the test's server."""
    url = re.search(r"http://127\.0\.0\.1:\d+(\S*)", line)
    body = re.search(r"-d @(\S+)", line)
    assert url and body, line
    req = urllib.request.Request(f"http://127.0.0.1:{port}{url.group(1)}",
                                 data=(cwd / body.group(1)).read_bytes(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


@pytest.mark.slow  # import, EDA, split, train with grouped CV, batch, serve: about a minute
def test_the_own_data_page_runs_as_written(tmp_path):
    table = write_shop(tmp_path)
    commands = page_commands(DOC)
    assert [c.split()[:3] for c in commands if c.startswith("modalfuse")][:2] == [
        ["modalfuse", "data", "import"], ["modalfuse", "data", "use"]]
    env = {**os.environ, "MODALFUSE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MODALFUSE_TRACKING": "false"}
    env.pop("MODALFUSE_DATASET", None)
    dataset = tmp_path / "data" / "datasets" / "shop"
    said: dict[str, str] = {}
    server: subprocess.Popen | None = None
    port = free_port()
    answer: dict = {}
    try:
        for line in commands:
            if line.startswith("modalfuse serve"):
                server = subprocess.Popen(re.sub(r"--port \d+", f"--port {port}", line).split(),
                                          cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
                wait_for(f"http://127.0.0.1:{port}/health", server)
                continue
            if line.startswith("curl"):
                answer = curl_as_python(line, port, tmp_path)
                continue
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=600)
            said[line] = done.stdout + done.stderr
            assert done.returncode == 0, f"{line}\n{said[line]}"
            if line == "modalfuse data split --explain":
                assert not (dataset / "splits.parquet").exists(), "the dry run wrote the split"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)

    out = {k.split(" --")[0]: " ".join(v.split()) for k, v in said.items()}
    assert f"images: {ROWS} found, 0 missing, 0 undecodable" in out["modalfuse data import"]
    assert "using shop by default" in out["modalfuse data use shop"]
    assert "dataset shop (" in out["modalfuse eda"]
    assert (dataset / "splits.parquet").is_file()
    assert (tmp_path / "data" / "models" / "shop" / "latest" / "bundle.json").is_file()

    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(preds) == ROWS and preds["error"].isna().all()
    assert (preds["predicted"].to_numpy() == table["category"].to_numpy()).mean() > 0.6
    first = preds[preds["id"] == FIRST_ID].iloc[0]
    assert answer["label"] == first["predicted"]
    for label, p in answer["probabilities"].items():  # one Predictor: batch and API agree
        assert abs(p - first[f"proba_{label}"]) < 1e-9

    everything = " ".join(said.values()).lower()
    leaked = [w for w in BUILT_IN_WORDS if w in everything]
    assert not leaked, f"the built-in dataset's words in a user's output: {leaked}"
