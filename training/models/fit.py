"""Training loop shared by every architecture, and batched prediction.

Supervised models (``tcn``, ``lstm``) minimise
``masked per-hour BCE(pos_weight) + video_weight * video BCE(pool(hour logits), any(Y*M))``:
the hour term teaches localisation, the video term makes the pooled window score (what the
scoring core flags on) well ranked across videos. ``pos_weight`` balances fake vs organic
hours (and fake vs organic windows for the video term), computed on the training set.

The autoencoder minimises the masked mean squared reconstruction error; the caller passes
organic windows only. ``Y`` is ignored for it.

Determinism: the same seed, data and thread count give the same weights. The caller sets the
number of threads (``torch.set_num_threads``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models import is_supervised

_MAX_POS_WEIGHT = 100.0


def _tensor(a: np.ndarray | torch.Tensor | None, name: str) -> torch.Tensor | None:
    if a is None:
        return None
    t = torch.as_tensor(np.asarray(a, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _masked_inputs(
    X: np.ndarray, Y: np.ndarray | None, M: np.ndarray | None, supervised: bool, part: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _tensor(X, f"X{part}")
    if x is None or x.ndim != 3:
        raise ValueError(f"X{part} must have shape (N, C, W)")
    n, _, w = x.shape
    m = _tensor(M, f"M{part}") if M is not None else torch.ones(n, w)
    if supervised:
        if Y is None:
            raise ValueError(f"Y{part} is required for supervised architectures")
        y = _tensor(Y, f"Y{part}")
    else:
        y = torch.zeros(n, w) if Y is None else _tensor(Y, f"Y{part}")
    for t, nm in ((y, "Y"), (m, "M")):
        if tuple(t.shape) != (n, w):
            raise ValueError(f"{nm}{part} must have shape (N, W) = {(n, w)}, got {tuple(t.shape)}")
    return x, y, m


def _pos_weight(pos: float, neg: float) -> float:
    if pos <= 0 or neg <= 0:
        return 1.0
    return float(min(max(neg / pos, 1.0), _MAX_POS_WEIGHT))


def _pool(logits: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Window logit from hour logits over observed hours (windows with none give -inf)."""
    z = logits.masked_fill(mask <= 0, float("-inf"))
    if how == "max":
        return z.amax(dim=1)
    if how == "lse":
        return torch.logsumexp(z, dim=1)
    raise ValueError(f"unknown video_pool {how!r}; use 'max' or 'lse'")


class _Loss:
    def __init__(
        self,
        supervised: bool,
        hour_pw: float,
        video_pw: float,
        video_weight: float,
        video_pool: str,
    ) -> None:
        self.supervised = supervised
        self.hour_pw = torch.tensor(hour_pw)
        self.video_pw = torch.tensor(video_pw)
        self.video_weight = video_weight
        self.video_pool = video_pool

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        denom = m.sum().clamp_min(1.0)
        if not self.supervised:
            err = model.hour_error(x)  # (N, W), plain MSE (no log1p) for training
            return (err * m).sum() / denom
        logits = model(x)
        hour = F.binary_cross_entropy_with_logits(
            logits, y, pos_weight=self.hour_pw, reduction="none"
        )
        loss = (hour * m).sum() / denom
        if self.video_weight > 0:
            has = m.sum(dim=1) > 0
            if bool(has.any()):
                vlog = _pool(logits[has], m[has], self.video_pool)
                vlab = ((y[has] * m[has]).amax(dim=1) > 0).float()
                vloss = F.binary_cross_entropy_with_logits(vlog, vlab, pos_weight=self.video_pw)
                loss = loss + self.video_weight * vloss
        return loss


def _evaluate(
    model: nn.Module, loss_fn: _Loss, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, bs: int
) -> float:
    """Loss over a whole set, batch losses weighted by batch size."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], bs):
            sl = slice(i, i + bs)
            b = x[sl].shape[0]
            total += float(loss_fn(model, x[sl], y[sl], m[sl])) * b
            count += b
    return total / max(count, 1)


def fit(
    model: nn.Module,
    X: np.ndarray,
    Y: np.ndarray | None,
    M: np.ndarray | None,
    *,
    arch: str,
    epochs: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int,
    X_val: np.ndarray | None = None,
    Y_val: np.ndarray | None = None,
    M_val: np.ndarray | None = None,
    log: Callable[[str], None] | None = print,
    weight_decay: float = 1e-4,
    patience: int = 5,
    video_weight: float = 0.5,
    video_pool: str = "max",
    grad_clip: float = 1.0,
) -> dict:
    """Train ``model`` in place; return the history.

    X: float32 (N, C, W); Y: {0,1} (N, W) fake-hour labels (ignored by the autoencoder, may
    be None for it); M: {0,1} (N, W) observed-hour mask (None = all observed). The loss only
    counts masked-in hours. With validation data, training stops after ``patience`` epochs
    without a val-loss improvement and the best weights are restored.

    History keys: ``train_loss``, ``val_loss`` (per epoch), ``epoch_seconds``,
    ``windows_per_second`` (mean training throughput), ``best_epoch`` (1-based),
    ``best_val_loss``, ``stopped_early``, ``hour_pos_weight``, ``video_pos_weight``,
    ``epochs_run``, ``seed``.
    """
    supervised = is_supervised(arch)
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    if not supervised and not hasattr(model, "hour_error"):
        raise ValueError(f"{arch} model has no hour_error(); expected an autoencoder")
    say = log or (lambda _msg: None)

    x, y, m = _masked_inputs(X, Y, M, supervised, "")
    has_val = X_val is not None
    if has_val:
        xv, yv, mv = _masked_inputs(X_val, Y_val, M_val, supervised, "_val")

    hour_pw = video_pw = 1.0
    if supervised:
        pos_h = float((y * m).sum())
        hour_pw = _pos_weight(pos_h, float(m.sum()) - pos_h)
        vids = (y * m).amax(dim=1) > 0
        observed = m.sum(dim=1) > 0
        pos_v = float((vids & observed).sum())
        video_pw = _pos_weight(pos_v, float(observed.sum()) - pos_v)
    loss_fn = _Loss(supervised, hour_pw, video_pw, video_weight, video_pool)

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )

    hist: dict = {
        "train_loss": [],
        "val_loss": [],
        "epoch_seconds": [],
        "hour_pos_weight": hour_pw,
        "video_pos_weight": video_pw,
        "seed": seed,
        "stopped_early": False,
        "best_epoch": None,
        "best_val_loss": None,
    }
    best_state, best_val, bad = None, math.inf, 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(x.shape[0], generator=gen)
            total, count = 0.0, 0
            for i in range(0, x.shape[0], batch_size):
                idx = perm[i : i + batch_size]
                loss = loss_fn(model, x[idx], y[idx], m[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
            dt = time.perf_counter() - t0
            hist["train_loss"].append(total / count)
            hist["epoch_seconds"].append(dt)
            msg = f"[{arch}] epoch {epoch}/{epochs} train {total / count:.4f}"
            if has_val:
                vl = _evaluate(model, loss_fn, xv, yv, mv, max(batch_size, 512))
                hist["val_loss"].append(vl)
                msg += f" val {vl:.4f}"
                if vl < best_val - 1e-6:
                    best_val, bad = vl, 0
                    best_state = copy.deepcopy(model.state_dict())
                    hist["best_epoch"], hist["best_val_loss"] = epoch, vl
                else:
                    bad += 1
            say(f"{msg} ({x.shape[0] / dt:.0f} windows/s)")
            if has_val and bad >= patience:
                hist["stopped_early"] = True
                say(f"[{arch}] early stop at epoch {epoch}; best epoch {hist['best_epoch']}")
                break
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
    if best_state is not None:
        model.load_state_dict(best_state)
    if not has_val:
        hist["best_epoch"] = len(hist["train_loss"])
    model.eval()
    hist["epochs_run"] = len(hist["train_loss"])
    hist["windows_per_second"] = (
        x.shape[0] * len(hist["epoch_seconds"]) / sum(hist["epoch_seconds"])
    )
    return hist


def predict(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Hour scores ``(N, W)`` float32 for features ``X`` ``(N, C, W)``, in eval mode."""
    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError("X must have shape (N, C, W)")
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                out.append(model(x[i : i + batch_size]).numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, x.shape[2]), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
