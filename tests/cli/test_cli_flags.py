"""The command line's shape: flags read naturally (`--x/--no-x` or a lone `--x`, never `--no-no-x`),
commands sit in stage panels, and errors end the way `main` promises."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from modalfuse import __version__
from modalfuse.cli import app, main
from modalfuse.errors import InvalidInput


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


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_ablation_is_its_own_command():
    out = _help("ablation")
    for opt in ("--model", "--doc", "--device", "--epochs", "--seed", "--out", "--dataset"):
        assert opt in out, opt
    evaluate = _help("evaluate")
    assert "--ablation" not in evaluate
    for gone in ("--doc", "--device", "--epochs", "--seed", "--model"):
        assert gone not in evaluate, gone
    assert "--metrics-file" in evaluate and "--split" in evaluate


def test_root_help_groups_commands_by_stage():
    out = _help()
    panels = ["1 · Data", "2 · Training", "3 · Inference", "4 · Tracking", "5 · Serving",
              "6 · Operations", "7 · Optimization & scale", "Reports"]
    at = [out.index(p) for p in panels]
    assert at == sorted(at), "panels are in pipeline order"
    assert "─ Commands ─" not in out  # every command sits in a stage panel
    # a command and a group land in their stage's panel
    assert at[1] < out.index("ablation ") < at[2]
    assert at[0] < out.index(" data ") < at[1]


def test_help_imports_no_heavy_library():
    code = ("import sys, modalfuse.cli; "
            "print(sorted(m for m in ('torch', 'mlflow', 'ray', 'pandas', 'numpy', 'sklearn', "
            "'lightgbm', 'uvicorn', 'gradio', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def failing_command():
    """A test-only command on the real app that raises whatever the test puts in `raise_`."""
    raise_: list[BaseException] = []

    @app.command("test-only-raise", hidden=True)
    def boom() -> None:
        raise raise_[0]

    yield raise_
    app.registered_commands[:] = [c for c in app.registered_commands
                                  if c.name != "test-only-raise"]


def test_modalfuse_error_exits_1_with_its_message(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("MODALFUSE_DEBUG", raising=False)
    failing_command.append(InvalidInput("--rows must be >= 1, got 0"))
    with pytest.raises(SystemExit) as exit_:
        main(["test-only-raise"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: --rows must be >= 1, got 0"
    assert "Traceback" not in err


def test_unexpected_exception_is_reported_as_a_bug(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("MODALFUSE_DEBUG", raising=False)
    failing_command.append(ZeroDivisionError("division by zero"))
    with pytest.raises(SystemExit) as exit_:
        main(["test-only-raise"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"modalfuse {__version__} bug: ZeroDivisionError: division by zero — "
                           "please report it with the command you ran")
    monkeypatch.setenv("MODALFUSE_DEBUG", "1")
    with pytest.raises(SystemExit):
        main(["test-only-raise"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("please report it with the command you ran")


def test_usage_errors_and_exit_keep_click_behaviour(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ablation"])
    assert exit_.value.code == 2 and "No such option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--bundle", "nowhere"])  # neither --global nor --id: fail(..., USAGE)
    assert exit_.value.code == 2
    assert "give exactly one of --global or --id ID" in capsys.readouterr().err


@pytest.mark.parametrize(("budget", "seconds"), [("1d", 86400), ("10m", 600), ("90", 90)])
def test_tune_time_budget_reads_durations_as_settings_do(budget, seconds, monkeypatch):
    """`tune --time-budget` takes what MODALFUSE_JOB_TTL takes (one parse_duration), 1d too."""
    import types

    import modalfuse.cli.training as cli_training
    import modalfuse.training.tune as tune_module

    seen: list[float] = []

    def fake_tune(ds, splits, s, time_budget, *args, **kwargs):
        seen.append(time_budget)
        raise InvalidInput("stopped after parsing")

    monkeypatch.setattr(cli_training, "load_data",
                        lambda dataset: (types.SimpleNamespace(tracking=False), None, None))
    monkeypatch.setattr(tune_module, "tune", fake_tune)
    result = CliRunner().invoke(app, ["tune", "--time-budget", budget])
    assert seen == [seconds]
    assert result.exit_code == 1 and "stopped after parsing" in result.output


def test_tune_refuses_a_bad_time_budget_naming_the_forms(monkeypatch):
    import types

    import modalfuse.cli.training as cli_training

    monkeypatch.setattr(cli_training, "load_data",
                        lambda dataset: (types.SimpleNamespace(tracking=False), None, None))
    result = CliRunner().invoke(app, ["tune", "--time-budget", "10 minutes"], terminal_width=200)
    assert result.exit_code == 1
    assert "'10 minutes'" in result.output and "90s, 10m, 12h, 7d" in result.output
