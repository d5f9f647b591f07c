"""Every command's boolean flags read naturally: `--x/--no-x` or a lone `--x`, never `--no-no-x`."""

from __future__ import annotations

import typer

from modalfuse.cli import app


def _commands(cmd, path: str = "modalfuse"):
    yield path, cmd
    if hasattr(cmd, "commands"):  # a group (typer carries its own click)
        for name, sub in cmd.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_no_boolean_flag_reads_no_no():
    bad, seen = [], 0
    for path, cmd in _commands(typer.main.get_command(app)):
        for p in cmd.params:
            if getattr(p, "is_flag", False):
                seen += 1
                names = [*p.opts, *p.secondary_opts]
                if any(n.startswith("--no-no-") for n in names):
                    bad.append(f"{path}: {' / '.join(names)}")
                # A positive flag that defaults to on must be switchable off, and vice versa.
                if p.secondary_opts:
                    assert not p.opts[0].startswith("--no-"), f"{path}: {names}"
    assert seen > 10  # the walk found the flags
    assert not bad, bad


def test_renamed_flags_keep_their_meaning():
    cmd = typer.main.get_command(app)
    train = cmd.commands["train"]  # type: ignore[attr-defined]
    opts = {o: p for p in train.params for o in p.opts}
    assert opts["--cv"].default is True and opts["--cv"].secondary_opts == ["--no-cv"]
    assert opts["--track"].secondary_opts == ["--no-track"]
    assert opts["--image-stats"].secondary_opts == ["--no-image-stats"]
    bench = cmd.commands["bench"].commands["serve"]  # type: ignore[attr-defined]
    mlflow = next(p for p in bench.params if "--mlflow" in getattr(p, "opts", []))
    assert mlflow.secondary_opts == ["--no-mlflow"] and mlflow.default is True
