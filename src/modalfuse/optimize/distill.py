"""Knowledge distillation: a teacher bundle (e.g. the stacked ensemble) into a small fusion network.

The student reads the same FeatureBatch (sprite + standardized record) and learns from the
teacher's *out-of-fold* probabilities on training rows (each row predicted by the teacher
fitted without that row's CV fold), mixed with the hard labels. No test row is used.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.nn import functional as F

from modalfuse.errors import InvalidInput
from modalfuse.features.image_tensor import image_tensor
from modalfuse.inference.bundle import ModelBundle
from modalfuse.models.calibration import CalibratedModel, apply_temperature
from modalfuse.models.netconfig import NetConfig
from modalfuse.models.neural import StackingModel
from modalfuse.optimize.prune import ALL_FOLDS, save_net_bundle
from modalfuse.training.folds import FoldEngine
from modalfuse.training.nets import FusionNet, TrainingImages, make_augment, seed_everything

STUDENT = NetConfig(image_size=16, width=4, embed_dim=16, tab_hidden=32, epochs=30, lr=5e-3,
                    dropout=0.2, tab_dropout=0.2)


def teacher_soft_targets(fitter: FoldEngine, teacher: ModelBundle) -> tuple[np.ndarray, np.ndarray]:
    """(raw rows, probabilities) of every training row, predicted out of fold by the teacher's
    recipe (its model, refitted per CV fold by `fitter`), calibrated as the teacher is."""
    name = str(teacher.meta.get("training", {}).get("config", {}).get("model", "gbm"))
    model, temperature = teacher.model, 1.0
    if isinstance(model, CalibratedModel):
        temperature = model.temperature
        model = model.inner
    if isinstance(model, StackingModel):
        # The teacher's own pooling weights over its parts' out-of-fold predictions.
        parts = [fitter.heldout(part) for part in model.parts]
        rows, proba = parts[0][0], model.combine([p for _, p in parts])
    else:
        rows, proba = fitter.heldout(name)
    return rows, apply_temperature(proba, temperature)


def _images(fitter: FoldEngine, rows: np.ndarray, size: int) -> TrainingImages:
    vp, vo = fitter.view_images()
    local = {int(p): i for i, p in enumerate(rows)}
    keep = np.array([int(o) in local for o in vo], dtype=bool)
    pixels = np.concatenate([fitter.raw.images[rows], vp[keep]])
    owner = np.concatenate([np.arange(len(rows)), [local[int(o)] for o in vo[keep]]]).astype(int)
    return TrainingImages(image_tensor(pixels, size), owner)


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor,
                 temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(hard labels)."""
    teacher_t = soft.clamp_min(1e-8).pow(1 / temperature)
    teacher_t = teacher_t / teacher_t.sum(dim=1, keepdim=True)
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), teacher_t, reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(logits, hard)


def fit_student(fitter: FoldEngine, soft: np.ndarray, cfg: NetConfig = STUDENT,
                temperature: float = 2.0, alpha: float = 0.7, seed: int = 42) -> nn.Module:
    """Train the student on training rows: teacher's out-of-fold soft targets + hard labels."""
    seed_everything(seed)
    rows = fitter.rows(ALL_FOLDS)
    batch = fitter.batch(ALL_FOLDS, rows)
    y = fitter.raw.y[rows]
    net = FusionNet(fitter.n_classes, batch.tabular_dense.shape[1], cfg)
    images = _images(fitter, rows, cfg.image_size)
    draw = images.sampler(len(rows))
    augment = make_augment(cfg) if cfg.augment else None
    rng = np.random.default_rng(seed)
    steps = int(np.ceil(len(rows) * cfg.views_per_epoch / cfg.batch_size))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    pixels, tab = torch.from_numpy(images.pixels), torch.from_numpy(batch.tabular_dense)
    soft_t, y_t = torch.from_numpy(soft.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    with Progress(transient=True) as progress:
        task = progress.add_task("distilling the student", total=cfg.epochs)
        for _ in range(cfg.epochs):
            net.train()
            img_idx, r = draw(rng, cfg.views_per_epoch)
            perm = rng.permutation(len(r))
            img_idx, r = img_idx[perm], r[perm]
            for s in range(steps):
                sl = slice(s * cfg.batch_size, (s + 1) * cfg.batch_size)
                if len(r[sl]) < 2:
                    continue  # BatchNorm needs two rows
                x = pixels[img_idx[sl]]
                if augment is not None:
                    x = augment(x)
                logits, _ = net(x, tab[r[sl]])
                loss = distill_loss(logits, soft_t[r[sl]], y_t[r[sl]], temperature, alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            progress.advance(task)
    return net.eval()


def distill(fitter: FoldEngine, teacher: ModelBundle, out: Path, cfg: NetConfig = STUDENT,
            temperature: float = 2.0, alpha: float = 0.7, seed: int = 42) -> ModelBundle:
    """Distil `teacher` into a small FusionNet; the student is saved as a one-network bundle."""
    started = time.perf_counter()
    rows, soft = teacher_soft_targets(fitter, teacher)
    if not np.array_equal(rows, fitter.rows(ALL_FOLDS)):
        raise InvalidInput("soft targets do not cover the training rows in order")
    y = fitter.raw.y[rows]
    net = fit_student(fitter, soft, cfg, temperature, alpha, seed)
    how = {"method": "distillation", "teacher": teacher.model_version,
           "teacher_oof_accuracy": float((soft.argmax(1) == y).mean()),
           "temperature": temperature, "alpha": alpha,
           "seconds": round(time.perf_counter() - started, 1)}
    return save_net_bundle(fitter, net, "intermediate", cfg, out, how)
