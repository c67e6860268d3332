"""Metrics at the validation-calibrated threshold, reported on the held-out test split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from stream_detector.dev.simulate import ORGANIC_KINDS, PATTERNS
from training.calibrate import localisation


@dataclass
class Evaluation:
    name: str
    threshold: float
    hour_threshold: float
    metrics: dict[str, float]
    by_pattern: dict[str, float]
    fpr_by_kind: dict[str, float]
    scores: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)


def classification(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    pred = scores >= threshold
    pos, neg = labels == 1, labels == 0
    tp, fp = int((pred & pos).sum()), int((pred & neg).sum())
    fn, tn = int((~pred & pos).sum()), int((~pred & neg).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    auc = float(roc_auc_score(labels, scores)) if pos.any() and neg.any() else float("nan")
    return {
        "auc": auc,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "fpr": fp / max(fp + tn, 1),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def evaluate(
    name: str,
    hour_p: np.ndarray,
    data,
    threshold: float,
    hour_threshold: float,
) -> Evaluation:
    scores = hour_p.max(axis=1)
    labels = np.asarray(data.label, dtype=int)
    metrics = classification(scores, labels, threshold)
    flagged = scores >= threshold
    metrics.update(localisation(hour_p, flagged, hour_threshold, threshold, data.hour_fake))
    pattern = np.asarray(data.pattern)
    kind = np.asarray(data.organic_kind)
    by_pattern = {
        p: float(flagged[(pattern == p) & (labels == 1)].mean()) if ((pattern == p) & (labels == 1)).any() else float("nan")
        for p in PATTERNS
    }
    fpr_by_kind = {
        k: float(flagged[(kind == k) & (labels == 0)].mean()) if ((kind == k) & (labels == 0)).any() else float("nan")
        for k in ORGANIC_KINDS
    }
    neg, pos = scores[labels == 0], scores[labels == 1]
    metrics["score_organic_p95"] = float(np.quantile(neg, 0.95)) if neg.size else float("nan")
    metrics["score_fake_median"] = float(np.median(pos)) if pos.size else float("nan")
    return Evaluation(name, threshold, hour_threshold, metrics, by_pattern, fpr_by_kind, scores, labels)


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def markdown_table(evals: list[Evaluation]) -> str:
    cols = ["auc", "precision", "recall", "f1", "fpr", "hours_localised_flagged", "flagged_hour_precision"]
    head = "| detector | AUC | precision | recall | F1 | FPR | fake hours localised ±1h | flagged-hour precision |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for e in evals:
        lines.append("| " + e.name + " | " + " | ".join(_fmt(e.metrics[c]) for c in cols) + " |")
    return "\n".join(lines)


def breakdown_tables(evals: list[Evaluation]) -> str:
    lines = ["| detector | " + " | ".join(PATTERNS) + " |", "|" + "---|" * (len(PATTERNS) + 1)]
    for e in evals:
        lines.append("| " + e.name + " | " + " | ".join(_fmt(e.by_pattern[p]) for p in PATTERNS) + " |")
    out = "Recall by pattern (test):\n\n" + "\n".join(lines)
    lines = ["| detector | " + " | ".join(ORGANIC_KINDS) + " |", "|" + "---|" * (len(ORGANIC_KINDS) + 1)]
    for e in evals:
        lines.append("| " + e.name + " | " + " | ".join(_fmt(e.fpr_by_kind[k]) for k in ORGANIC_KINDS) + " |")
    return out + "\n\nFalse-positive rate by organic kind (test):\n\n" + "\n".join(lines)


def plot_roc(evals: list[Evaluation], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for e in evals:
        fpr, tpr, _ = roc_curve(e.labels, e.scores)
        ax.plot(fpr, tpr, label=f"{e.name} (AUC {e.metrics['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC on the held-out test week")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histogram(e: Evaluation, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    ax.hist(e.scores[e.labels == 0], bins=bins, alpha=0.6, label="organic", density=True)
    ax.hist(e.scores[e.labels == 1], bins=bins, alpha=0.6, label="fake", density=True)
    ax.axvline(e.threshold, color="k", ls="--", lw=1, label=f"threshold {e.threshold:.2f}")
    ax.set_xlabel("video score")
    ax.set_title(f"Score separation: {e.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(data, hour_p: np.ndarray, threshold: float, hour_threshold: float, path: str, k: int = 6) -> None:
    """A few test videos (fakes of each pattern and hard negatives) with flagged hours shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks: list[int] = []
    pattern = np.asarray(data.pattern)
    kind = np.asarray(data.organic_kind)
    labels = np.asarray(data.label)
    for p in PATTERNS[:4]:
        idx = np.flatnonzero(pattern == p)
        if idx.size:
            picks.append(int(idx[0]))
    for kd in ("viral", "other_timezone"):
        idx = np.flatnonzero((kind == kd) & (labels == 0))
        if idx.size:
            picks.append(int(idx[0]))
    fig, axes = plt.subplots(len(picks), 1, figsize=(9, 1.9 * len(picks)), sharex=True)
    axes = np.atleast_1d(axes)
    names = ("views", "likes", "comments", "shares")
    for ax, i in zip(axes, picks, strict=False):
        for m, nm in enumerate(names):
            ax.plot(np.log1p(data.counts[i, m]), lw=0.8, label=nm)
        truth = data.hour_fake[i]
        hot = (hour_p[i] >= min(hour_threshold, threshold)) & (hour_p[i].max() >= threshold)
        for t in np.flatnonzero(truth):
            ax.axvspan(t, t + 1, color="red", alpha=0.15, lw=0)
        for t in np.flatnonzero(hot):
            ax.axvspan(t, t + 1, ymin=0.9, ymax=1.0, color="black", alpha=0.6, lw=0)
        title = data.pattern[i] or f"organic: {data.organic_kind[i]}"
        ax.set_title(f"{data.video_ids[i]}  {title}  score {hour_p[i].max():.2f}", fontsize=8)
        ax.set_ylabel("log1p")
    axes[0].legend(fontsize=6, ncol=4, loc="upper right")
    axes[-1].set_xlabel("hour of the test week (red: true fake hours, black bar: flagged hours)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
