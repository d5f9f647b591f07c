"""The lock (requirements/*.txt) agrees with pyproject.toml, and every install path uses it."""

from __future__ import annotations

import re

import pytest

from repo_scripts import REPO, load_script

lock = load_script("lock")


def test_every_install_set_agrees_with_pyproject():
    assert lock.check(list(lock.BY_NAME)) == []


def test_a_changed_dependency_is_caught(monkeypatch):
    real = lock.load_pyproject

    def edited():
        pyproject = real()
        pyproject["project"]["optional-dependencies"]["serve"].append("orjson>=3")
        return pyproject

    monkeypatch.setattr(lock, "load_pyproject", edited)
    problems = lock.check(["serve", "dev"])
    assert any("changed since" in p for p in problems), problems
    assert any("orjson>=3 is not in requirements/serve.txt" in p for p in problems), problems
    monkeypatch.setattr(lock, "load_pyproject", real)
    assert lock.check(["serve"]) == []


def test_a_pin_outside_its_range_is_caught(monkeypatch, tmp_path):
    serve = (lock.LOCK_DIR / "serve.txt").read_text()
    fastapi = re.search(r"^fastapi==(\S+)", serve, flags=re.M).group(1)
    (tmp_path / "serve.txt").write_text(serve.replace(f"fastapi=={fastapi}", "fastapi==0.1.0"))
    (tmp_path / "dev.txt").write_text((lock.LOCK_DIR / "dev.txt").read_text())
    monkeypatch.setattr(lock, "LOCK_DIR", tmp_path)
    problems = lock.check(["serve"])
    assert any("fastapi==0.1.0, outside" in p for p in problems), problems
    assert any("requirements/dev.txt pins" in p for p in problems), problems


@pytest.mark.parametrize("install_set", ["dev", "run", "serve", "ui", "train", "mlflow-server"])
def test_the_sets_hold_what_they_promise(install_set):
    pins = lock.read_pins(lock.BY_NAME[install_set].path)
    if install_set in ("serve", "ui"):
        # The serving images stay lean: no training, UI-free serve, no tracking client.
        assert not {"torch", "lightgbm", "scikit-learn", "mlflow"} & set(pins)
        assert ("gradio" in pins) == (install_set == "ui")
    if install_set in ("run", "train", "dev"):
        assert str(pins["torch"]).endswith("+cpu")  # the CPU build, never a CUDA one
    if install_set == "run":
        assert not {"pytest", "playwright", "moto", "ray"} & set(pins)  # dev and scale only


def test_every_install_path_installs_from_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes --no-deps" in makefile and "requirements/$*.txt" in makefile
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    for target in ("serve", "ui", "train"):
        assert f"--require-hashes --no-deps -r /wheels/requirements/{target}.txt" in dockerfile
    assert "-r /wheels/requirements/mlflow-server.txt" in (REPO / "docker" / "stack.Dockerfile").read_text()
    # No install of a package by name that would resolve outside the lock.
    for path in [REPO / "Makefile", *(REPO / "docker").glob("*Dockerfile"), *(REPO / "docker").glob("*.sh")]:
        for line in path.read_text().splitlines():
            if "pip install" in line and "uninstall" not in line:
                assert "-r " in line or "--no-deps" in line, f"{path.name}: {line.strip()}"
