"""Building modalfuse prints no warning about its own metadata, and the wheel carries its license."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

from repo_scripts import REPO


def quiet_env() -> dict[str, str]:
    """The environment without the switch that makes setuptools say it skips byte-compiling."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def complaints(output: str, tmp_path) -> list[str]:
    """Lines that warn or announce a deprecation (the temporary folder's own name left out)."""
    return [ln for ln in output.replace(str(tmp_path), "TMP").splitlines()
            if re.search(r"warn|deprecat", ln, flags=re.I) and "is ignored" not in ln]


def test_the_build_is_silent(tmp_path):
    # The sdist, then the wheel from it, offline with the locked setuptools: what `make install`,
    # docker/wheels.sh and a user's `pip install` build.
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path),
                           str(REPO)], capture_output=True, text=True, timeout=300, env=quiet_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert complaints(done.stdout + done.stderr, tmp_path) == []
    from modalfuse import __version__

    wheel = next(tmp_path.glob(f"modalfuse-{__version__}-py3-none-any.whl"))
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"modalfuse-{__version__}.dist-info/METADATA").decode()
        assert "License-Expression: Apache-2.0" in metadata
        assert f"modalfuse-{__version__}.dist-info/licenses/LICENSE" in zf.namelist()


def test_pip_reads_the_metadata_silently(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--no-build-isolation", "--report", str(tmp_path / "report.json"), str(REPO)],
                          capture_output=True, text=True, timeout=300, env=quiet_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert complaints(done.stdout + done.stderr, tmp_path) == []
