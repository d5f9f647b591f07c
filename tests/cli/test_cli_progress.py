"""Code tier: the CLI's progress reporter — lines on a stderr that is not a terminal, with the
count, what is under way, elapsed time and time left, not one line per step."""

from __future__ import annotations

import io

from rich.console import Console

from modalfuse.cli.progress import KindState, RichReporter, clock, progress_bars
from modalfuse.progress import SILENT, steps


def reporter() -> tuple[RichReporter, io.StringIO]:
    out = io.StringIO()
    return RichReporter(Console(file=out, width=200), live=False, interval_s=3600), out


def test_lines_at_start_end_and_next_item_not_every_step():
    rep, out = reporter()
    for i, model in enumerate(("gbm", "cnn")):  # as the ablation reports
        rep.on_step("model", f"{model}: cross-validation", i, 2, 90.0)
        for k in range(5):
            rep.on_step("fold", f"{model} without fold {k}", k, 5)
        rep.on_step("fold", f"{model} without fold 4", 5, 5)
        rep.on_step("model", model, i + 1, 2, 45.0 * (1 - i))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[0:00:00] model 0/2 gbm: cross-validation · 0:00:00 elapsed, "
                               "ETA 0:01:30")
    assert sum("fold 0/5" in line for line in lines) == 2  # each round's start ...
    assert sum("fold 5/5" in line and "took" in line for line in lines) == 2  # ... and end
    assert not any("fold 2/5" in line for line in lines)  # not every step
    assert "model 1/2 cnn: cross-validation" in out.getvalue()  # the next model, same count
    assert lines[-1].startswith("[0:00:00] model 2/2 cnn · took")


def test_time_left_counts_down_from_the_pace_or_the_callers_estimate():
    st = KindState("fold", done=2, total=5, round_started=0.0, stepped=10.0)
    assert st.seconds_left(10.0) == 15.0  # 5 s a fold, three to go
    assert st.seconds_left(14.0) == 11.0
    assert st.seconds_left(100.0) == 0.0
    st.eta_s = 60.0
    assert st.seconds_left(20.0) == 50.0
    assert KindState("fit", 3, None, 0.0, 1.0).seconds_left(2.0) is None
    assert clock(3725) == "1:02:05" and clock(None) == "-:--:--"


def test_steps_reports_each_item_and_the_end():
    rep, out = reporter()
    assert list(steps(["a", "b", "c"], rep, "image", "decoding images")) == ["a", "b", "c"]
    assert rep.kinds["image"].done == 3 and rep.kinds["image"].finished
    assert "image 3/3 decoding images · took" in out.getvalue()
    assert list(steps([1, 2], SILENT, "image", str)) == [1, 2]


def test_live_bars_leave_nothing_behind():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress_bars(console) as bars:
        assert bars.progress is not None
        bars.on_step("epoch", "cnn network, all training rows", 0, 3)
        bars.on_step("epoch", "cnn network, all training rows, loss 1.234", 1, 3)
        task = bars.progress.tasks[0]
        assert task.completed == 1 and task.total == 3 and task.visible
        bars.on_step("epoch", "cnn network, all training rows, loss 1.001", 3, 3)
        assert not task.visible  # a finished round leaves the screen
        bars.on_step("epoch", "cnn network, without folds 0", 0, 3)
        assert task.visible and task.completed == 0
    assert "loss" not in out.getvalue().splitlines()[-1]  # transient: the bars are cleared
