"""What an ablation will run and about how long it will take, said before it starts, and the
time left while it runs.

The estimate is a stated table scaled by a measured rate. `SECONDS_2_CORES` holds what each
recipe added to the default ablation on a 2-core reference machine (the built-in dataset: 517
training rows in 5 folds), split into a fixed part and a part per network epoch; the table is
scaled by the dataset's training rows and folds, and the per-epoch part by how long one
training step of the image network takes on this machine (`nets.time_training_step`) against
the reference's `REFERENCE_STEP_S`. While the ablation runs, the models finished so far correct
the rest (`AblationPace`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from modalfuse.data.split import Splits
from modalfuse.models.netconfig import NetConfig
from modalfuse.training import recipes
from modalfuse.training.config import TrainConfig

# Seconds each recipe added to `modalfuse ablation -d pokemon` (every recipe, in listing
# order) on the reference, a 2-vCPU machine (AMD EPYC), after the recipes before it:
# (fixed, per network epoch), fitted to its runs with --epochs 6 (209 s in all) and 24 (437 s).
SECONDS_2_CORES: dict[str, tuple[float, float]] = {
    "gbm_tabular": (20.0, 0.0),
    "gbm": (10.6, 0.0),
    "cnn": (21.2, 3.6),
    "gbm_image": (2.0, 0.0),
    "stacking": (38.9, 4.8),
    "intermediate": (15.2, 4.2),
    "gbm_embed": (17.0, 0.0),
    "linear": (6.9, 0.0),
    "gbm_linear": (1.9, 0.0),
}
# Recipes whose fits another recipe reuses through the fold engine (paid for by the first).
REUSES: dict[str, tuple[str, ...]] = {
    "stacking": ("gbm", "gbm_tabular", "cnn"),
    "gbm_embed": ("cnn",),
    "gbm_linear": ("gbm", "linear"),
}
# An unknown (user-registered) recipe is estimated as a LightGBM one.
UNKNOWN = SECONDS_2_CORES["gbm"]
# The dataset the table was measured on: training rows and CV folds.
MEASURED_ROWS, MEASURED_FOLDS = 517, 5
# One training step of the default image network (`time_training_step(NetConfig())`) on the
# reference machine during those runs (44 and 49 ms).
REFERENCE_STEP_S = 0.047


def epoch_factor(cfg: NetConfig, step_s: float) -> float:
    """How much longer a network epoch takes here with `cfg` than on the reference machine
    with the default settings, from one measured step (`step_s`) and the steps in an epoch."""
    ref = NetConfig()
    steps = cfg.views_per_epoch / cfg.batch_size
    return (step_s / REFERENCE_STEP_S) * steps / (ref.views_per_epoch / ref.batch_size)


@dataclass(frozen=True)
class AblationPlan:
    """The models of an ablation in order, its folds and epochs, and each model's estimated
    seconds (what it adds after the models before it)."""

    models: tuple[str, ...]
    folds: int
    epochs: int
    seconds: dict[str, float] = field(default_factory=dict)
    step_s: float | None = None  # the measured training step the estimate is scaled by
    unmeasured: tuple[str, ...] = ()  # recipes the table does not know (estimated as LightGBM)

    @property
    def total_seconds(self) -> float:
        """The whole ablation's estimate."""
        return sum(self.seconds.values())

    def summary(self) -> str:
        """One sentence for the user before the run: what runs and about how long it takes."""
        n = len(self.models)
        nets = any(recipes.get(m).needs_torch for m in self.models)
        where = "on a quiet 2-core machine like the reference"
        if nets and self.step_s is not None:
            where = (f"here (a network training step took {self.step_s * 1000:.0f} ms, "
                     f"{REFERENCE_STEP_S * 1000:.0f} ms on the 2-core reference)")
        rough = (f"; {', '.join(self.unmeasured)} counted as a LightGBM recipe"
                 if self.unmeasured else "")
        return (f"{n} model{'s' if n != 1 else ''} × {self.folds} folds, then a final fit of "
                f"{'each' if n != 1 else 'it'}" + (f"; networks train {self.epochs} epochs"
                                                   if nets else "")
                + f": about {minutes(self.total_seconds)} {where}{rough}")


def minutes(seconds: float) -> str:
    """`40 s`, `3.5 min`, `12 min` or `1 h 05 min`: a rough duration in words."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    m = round(seconds / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def measure_step(cfg: TrainConfig, models: Sequence[str] | None = None) -> float | None:
    """A training step of the image network timed here, when the ablation trains networks
    (torch is the `train` extra, imported only then); None when it trains none."""
    if not any(recipes.get(m).needs_torch for m in models or recipes.names()):
        return None
    from modalfuse.training.nets import time_training_step

    return time_training_step(cfg.net)


def plan_ablation(splits: Splits, cfg: TrainConfig, models: Sequence[str] | None = None,
                  step_s: float | None = None) -> AblationPlan:
    """The plan of `run_ablation(…, cfg, models)` on these splits, with its time estimate;
    `step_s`, a training step measured here, scales the networks (else the reference's)."""
    names = tuple(models or recipes.names())
    for m in names:
        recipes.get(m)
    folds = len(splits.folds())
    # Each fit sees the training rows; there is one per fold and a final one.
    scale = (len(splits.ids("train")) / MEASURED_ROWS) * ((folds + 1) / (MEASURED_FOLDS + 1))
    per_epoch = cfg.net.epochs * (epoch_factor(cfg.net, step_s) if step_s is not None else 1.0)
    counted: set[str] = set()
    seconds = {}
    for m in names:
        todo = [r for r in (*REUSES.get(m, ()), m) if r not in counted]
        counted.update(todo)
        seconds[m] = scale * sum(fixed + each * per_epoch
                                 for fixed, each in (SECONDS_2_CORES.get(r, UNKNOWN) for r in todo))
    unknown = tuple(m for m in names if m not in SECONDS_2_CORES)
    return AblationPlan(names, folds, cfg.net.epochs, seconds, step_s, unknown)


class AblationPace:
    """Seconds left in a running ablation: the plan's estimates of the models not yet done,
    scaled by how long the finished ones took against their estimates."""

    def __init__(self, plan: AblationPlan):
        self.plan = plan
        self.spent = 0.0
        self.estimated = 0.0

    def finished(self, name: str, seconds: float) -> None:
        """Model `name` took `seconds`."""
        self.spent += seconds
        self.estimated += self.plan.seconds.get(name, 0.0)

    def seconds_left(self, index: int, into_current: float = 0.0) -> float:
        """Left when model `index` (0-based) has run for `into_current` seconds."""
        speed = self.spent / self.estimated if self.estimated > 0 else 1.0
        rest = [self.plan.seconds.get(m, 0.0) * speed for m in self.plan.models[index:]]
        if not rest:
            return 0.0
        return max(rest[0] - into_current, 0.0) + sum(rest[1:])
