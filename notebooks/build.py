"""Write (and, with --execute, run) the four notebooks from the cells below.

    .venv/bin/python notebooks/build.py --execute     # rewrites notebooks/*.ipynb with outputs

The notebooks use only the packages' public functions. ``NOTEBOOK_SMALL=1`` (what CI and
``--execute`` use) keeps all four under a few minutes; without it they use bigger samples.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = """\
import os, warnings
import numpy as np
import matplotlib.pyplot as plt
%matplotlib inline
warnings.filterwarnings("ignore", category=RuntimeWarning)
plt.rcParams.update({"figure.dpi": 80, "font.size": 8})
SMALL = os.environ.get("NOTEBOOK_SMALL") == "1"  # CI: small samples, same code
print("small-data mode" if SMALL else "full mode")"""

NB01 = [
    ("md", """# 01 · Exploration: what organic and fake engagement look like

Simulated organic videos of every kind (`stream_detector.dev.simulate`), the real count series
that give organic curves real-world texture (`stream_detector.dev.texture`), each fake pattern
next to its organic look-alike, and the distributions that make the problem hard."""),
    ("code", SETUP),
    ("code", """\
from stream_detector.dev.simulate import ORGANIC_KINDS, simulate
from stream_detector.dev.texture import RealTexture, load_pool

N = 400 if SMALL else 1500
data = simulate(N, seed=11, texture=RealTexture("train"))
kinds = np.array(data.organic_kind); labels = data.label.astype(bool)
print(f"{N} videos, {labels.sum()} with fake engagement")
for k in ORGANIC_KINDS:
    print(f"  {k:15s} organic {((kinds == k) & ~labels).sum():4d}   fake {((kinds == k) & labels).sum():4d}")"""),
    ("md", "## Organic videos of every kind (log1p views per hour over one week)"),
    ("code", """\
fig, axes = plt.subplots(len(ORGANIC_KINDS), 1, figsize=(9, 1.4 * len(ORGANIC_KINDS)), sharex=True)
for ax, k in zip(axes, ORGANIC_KINDS, strict=True):
    i = int(np.flatnonzero((kinds == k) & ~labels)[0])
    for m, name in enumerate(("views", "likes")):
        ax.plot(np.log1p(data.counts[i, m]), lw=0.8, label=name)
    ax.set_ylabel(k, rotation=0, ha="right")
axes[0].legend(fontsize=6); axes[-1].set_xlabel("hour of the week")
plt.tight_layout()"""),
    ("md", """## The real count series behind the texture

Two disjoint pools: `train` (training, validation, calibration) and `test` (the held-out
evaluation). The long taxi series is cut in time between them."""),
    ("code", """\
fig, axes = plt.subplots(2, 1, figsize=(9, 4))
for ax, pool in zip(axes, ("train", "test"), strict=True):
    for name, s in load_pool(pool):
        ax.plot(np.log1p(s[:24 * 14] / max(np.median(s), 1e-9)), lw=0.7, label=name[:24])
    ax.set_title(f"{pool} pool: two weeks of each series (log1p of count / median)")
    ax.legend(fontsize=6, ncol=3)
plt.tight_layout()"""),
    ("md", "## Each fake pattern next to its organic look-alike (red: the fake hours)"),
    ("code", """\
pairs = [("spike", "news"), ("offpeak_burst", "other_timezone"), ("lockstep", "regular"),
         ("decay_violation", "viral"), ("ratio_anomaly", "real_textured")]
pattern = np.array(data.pattern)
fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 1.6 * len(pairs)), sharex=True)
for row, (p, k) in zip(axes, pairs, strict=True):
    i = int(np.flatnonzero(pattern == p)[0]); j = int(np.flatnonzero((kinds == k) & ~labels)[0])
    for ax, v, title in ((row[0], i, f"fake: {p}"), (row[1], j, f"organic: {k}")):
        for m in range(4):
            ax.plot(np.log1p(data.counts[v, m]), lw=0.7)
        for t in np.flatnonzero(data.hour_fake[v]):
            ax.axvspan(t, t + 1, color="red", alpha=0.15, lw=0)
        ax.set_title(title, fontsize=8)
plt.tight_layout()"""),
    ("md", """## Why it is hard

Audiences span six orders of magnitude, real texture swings hour to hour far beyond counting
noise, and metric mixes overlap between organic and fake videos."""),
    ("code", """\
level = np.median(data.counts[:, 0], axis=1) + 0.5
swing = np.array([np.quantile(np.abs(np.diff(np.log1p(c[0])))[c[0, 1:] > 20], 0.9) if (c[0, 1:] > 20).sum() > 10
                  else np.nan for c in data.counts])
like_rate = (data.counts[:, 1].sum(1) + 1) / (data.counts[:, 0].sum(1) + 1)
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].hist(np.log10(level), bins=40); axes[0].set_title("median views per hour (log10)")
tex = data.textured
axes[1].hist([swing[~tex & ~labels], swing[tex & ~labels]], bins=30, label=["plain", "textured"], density=True)
axes[1].set_title("90th pct hour-to-hour log change (organic)"); axes[1].legend()
axes[2].hist([np.log10(like_rate[~labels]), np.log10(like_rate[labels])], bins=40, label=["organic", "fake"],
             density=True)
axes[2].set_title("like rate (log10)"); axes[2].legend()
plt.tight_layout()"""),
]

NB02 = [
    ("md", """# 02 · Feature engineering: channels and pattern evidence, hour by hour

The model's input channels (`stream_detector.features`) and the pattern detectors' evidence
(`stream_detector.patterns`), for a few videos, with the hours the shipped model flags."""),
    ("code", SETUP),
    ("code", """\
from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.features import CHANNELS, build_features
from stream_detector.models import ModelArtifact
from stream_detector.patterns import PATTERNS, detect
from stream_detector.scoring import Scorer
from stream_detector.dev.simulate import simulate
from stream_detector.dev.texture import RealTexture

data = simulate(200, seed=21, texture=RealTexture("test"))
scorer = Scorer(ModelArtifact.load(DEFAULT_MODEL_PATH))
pattern, kinds = np.array(data.pattern), np.array(data.organic_kind)
picks = [int(np.flatnonzero(pattern == "spike")[0]), int(np.flatnonzero(pattern == "offpeak_burst")[0]),
         int(np.flatnonzero((kinds == "news") & (data.label == 0))[0]),
         int(np.flatnonzero((kinds == "real_textured") & (data.label == 0))[0])]
for c in CHANNELS:
    print(c)"""),
    ("md", """What each channel is for: `rel_log_*` the video's level relative to its own median (a
small and a huge video look alike); `log_*_rate` the metric mix; `audience_scale` how big the
audience is (small ones are noisy); `diurnal_excess` / `diurnal_quietness` activity against
the video's *own* daily rhythm (another time zone has its own quiet hours); `log_age` hours
since publication; `observed` which hours the window has seen (earlier ones are unknown)."""),
    ("code", """\
starts = np.full(len(picks), data.start_hour); pubs = data.published_hour[picks]
x, mask = build_features(data.counts[picks], starts, pubs)
evidence = detect(data.counts[picks], starts, mask, pubs).evidence
scores = scorer.score([data.series(i) for i in picks])
for k, i in enumerate(picks):
    vs = scores[k]
    title = data.pattern[i] or f"organic {data.organic_kind[i]}"
    fig, axes = plt.subplots(3, 1, figsize=(9, 4.2), sharex=True)
    for m in range(4):
        axes[0].plot(np.log1p(data.counts[i, m]), lw=0.7)
    axes[0].set_title(f"{data.video_ids[i]} ({title}): score {vs.score:.2f}, flagged {vs.flagged}", fontsize=8)
    for c in (0, 4, 8, 9):
        axes[1].plot(x[k, c], lw=0.7, label=CHANNELS[c])
    axes[1].legend(fontsize=6, ncol=4)
    for p, name in enumerate(PATTERNS):
        axes[2].plot(evidence[k, p], lw=0.8, label=name)
    axes[2].plot(vs.hour_probability, "k", lw=1.0, label="hour probability")
    axes[2].legend(fontsize=6, ncol=6); axes[2].set_ylim(-0.05, 1.05)
    for ax in axes:
        for t in np.flatnonzero(data.hour_fake[i]):
            ax.axvspan(t, t + 1, color="red", alpha=0.12, lw=0)
        for w in vs.windows:
            ax.axvspan(w.start_hour - data.start_hour, w.end_hour - data.start_hour, ymin=0.92, color="black",
                       alpha=0.5, lw=0)
    print(vs.explanation)
    plt.tight_layout(); plt.show()"""),
]

NB03 = [
    ("md", """# 03 · Modelling: TCN, autoencoder and LSTM, trained small on CPU

Through the `training` package's public API: simulated weeks with real texture
(`training.dataset`), the pipeline's `train_model` for each architecture, learning curves,
export to ONNX (`training.export.export_onnx`) and a parity check against onnxruntime."""),
    ("code", SETUP),
    ("code", """\
import tempfile
import torch
from stream_detector.features import CHANNELS, FEATURE_VERSION, fit_normalization, normalize
from stream_detector.dev.texture import RealTexture
from training.dataset import make_split, simulate_week
from training.models import count_parameters
from training.models.fit import predict
from training.pipeline import merge_splits, train_model

torch.set_num_threads(2)
VIDEOS = 150 if SMALL else 800
EPOCHS = 3 if SMALL else 12
weeks = [simulate_week(3, k, VIDEOS, texture=RealTexture("train")) for k in range(3)]
splits = [make_split(f"week{k}", d) for k, d in enumerate(weeks)]
train, val = merge_splits("train", splits[:2]), splits[2]
stats = fit_normalization(train.x, train.mask)
print(f"train {len(train.data)} / val {len(val.data)} videos, {len(CHANNELS)} channels, feature version {FEATURE_VERSION}")"""),
    ("code", """\
models = {}
for arch in ("tcn", "autoencoder", "lstm"):
    models[arch] = train_model(arch, train, val, stats, EPOCHS, seed=3, log=lambda msg: None)
    h = models[arch].history_
    print(f"{arch:12s} {count_parameters(models[arch]):6d} parameters, best epoch {h['best_epoch']}, "
          f"{h['windows_per_second']:.0f} windows/s")
fig, ax = plt.subplots(figsize=(6, 3))
for arch, m in models.items():
    ax.plot(m.history_["train_loss"], label=f"{arch} train"); ax.plot(m.history_["val_loss"], "--", label=f"{arch} val")
ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.legend(fontsize=6); plt.tight_layout()"""),
    ("md", "## Export the TCN as a model artifact and check onnxruntime against torch"),
    ("code", """\
from stream_detector.models import ModelArtifact, Combiner
from stream_detector.patterns import PATTERNS
from training.export import export_onnx

model = models["tcn"]
meta = {"name": "notebook-tcn", "version": "0.0.1", "architecture": "tcn", "window_hours": 168,
        "channels": list(CHANNELS), "feature_version": FEATURE_VERSION, "normalization": stats, "threshold": 0.5,
        "combiner": Combiner(-3.0, 1.0, [0.0] * len(PATTERNS), 0.5).to_dict(), "training_data_fingerprint": "0" * 64,
        "metrics": {}, "created_at": "2026-01-01T00:00:00Z"}
path = tempfile.mkdtemp() + "/tcn.onnx"
sha = export_onnx(model, path, in_channels=len(CHANNELS), window=168, metadata=meta)
artifact = ModelArtifact.load(path)
xv = normalize(val.x[:64], val.mask[:64], stats)
torch_out, onnx_out = predict(model, xv), artifact.run(xv)
print(f"sha256 {sha[:16]}..., max |torch - onnxruntime| = {np.abs(torch_out - onnx_out).max():.2e}")"""),
]

NB04 = [
    ("md", """# 04 · Evaluation: what the shipped model gets right and wrong

The protocol: consecutive simulated weeks with their own seeds (3 train / 1 validation / 1
test = 60/20/20, time-aware, every week has the same mix so the split is stratified),
expanding-window time-series cross-validation, a held-out week whose organic texture comes
from real series training never saw. Then ROC and score distributions, recall per pattern,
false positives per organic kind, hourly localisation, the worst false positives and misses
with their explanations, and the stream process next to the offline verdict."""),
    ("code", SETUP),
    ("code", """\
from sklearn.metrics import roc_auc_score, roc_curve
from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.decision import StreamDecision, Thresholds, closed_window
from stream_detector.models import ModelArtifact
from stream_detector.scoring import Scorer
from stream_detector.dev.simulate import ORGANIC_KINDS, PATTERNS
from stream_detector.dev.texture import RealTexture
from training.calibrate import localisation
from training.dataset import simulate_week

model = ModelArtifact.load(DEFAULT_MODEL_PATH)
scorer = Scorer(model)
VIDEOS = 300 if SMALL else 1500
test = simulate_week(8, 4, VIDEOS, texture=RealTexture("test"))  # a seed and texture pool training never saw
series = [closed_window(s, s.end_hour + 2) for s in test.iter_series()]
scores = scorer.score(series)
s = np.array([v.score for v in scores]); y = test.label.astype(bool)
flagged = s >= model.threshold
print(f"AUC {roc_auc_score(y, s):.3f}; at the offline threshold {model.threshold:.3f}: recall "
      f"{(flagged & y).sum() / y.sum():.3f}, FPR {(flagged & ~y).sum() / (~y).sum():.3f}")"""),
    ("code", """\
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
fpr, tpr, _ = roc_curve(y, s)
axes[0].plot(fpr, tpr); axes[0].plot([0, 1], [0, 1], "k:"); axes[0].set_xlabel("FPR"); axes[0].set_ylabel("TPR")
axes[0].set_title("ROC, held-out week")
axes[1].hist([s[~y], s[y]], bins=np.linspace(0, 1, 41), label=["organic", "fake"], density=True)
axes[1].axvline(model.threshold, color="k", ls="--", label="offline threshold"); axes[1].legend()
plt.tight_layout()"""),
    ("code", """\
pattern, kinds = np.array(test.pattern), np.array(test.organic_kind)
print("recall by pattern:  " + "  ".join(f"{p} {flagged[pattern == p].mean():.2f}" for p in PATTERNS))
print("FPR by organic kind: " + "  ".join(f"{k} {flagged[(kinds == k) & ~y].mean():.2f}" for k in ORGANIC_KINDS
                                          if ((kinds == k) & ~y).any()))
# the scored window is the week's last 167 hours plus the closed quiet hour after it: align to the week
hour_p = np.stack([np.r_[0.0, v.hour_probability[:-1]] for v in scores])
loc = localisation(hour_p, flagged, model.combiner.hour_threshold, model.threshold, test.hour_fake)
print({k: round(v, 3) for k, v in loc.items()})"""),
    ("md", "## The worst false positives and misses, with the explanation a moderator would read"),
    ("code", """\
fp = [i for i in np.argsort(-s) if not y[i] and flagged[i]][:3]
miss = [i for i in np.argsort(s) if y[i]][:3]
for title, idx in (("false positive", fp), ("miss", miss)):
    for i in idx:
        vs = scores[i]
        fig, ax = plt.subplots(figsize=(9, 1.6))
        for m in range(4):
            ax.plot(np.log1p(test.counts[i, m]), lw=0.7)
        for t in np.flatnonzero(test.hour_fake[i]):
            ax.axvspan(t, t + 1, color="red", alpha=0.15, lw=0)
        kind = test.pattern[i] or f"organic {test.organic_kind[i]}"
        ax.set_title(f"{title}: {test.video_ids[i]} ({kind}), score {vs.score:.2f}", fontsize=8); plt.show()
        print("   ", vs.explanation)"""),
    ("md", """## Offline verdict vs the stream process as deployed

The worker decides on closed hours as a week unfolds (minute-level events, hour closures,
the immediate path), and a video counts if it was *ever* flagged
(`training.stream_eval`, the same code the training report uses)."""),
    ("code", """\
from training.stream_eval import replay, stream_metrics

sub = test.subset(np.arange(60 if SMALL else 400))
publish = model.publish_threshold()
run = replay(scorer, StreamDecision(Thresholds.from_artifact(publish, model.decision, model.combiner.hour_threshold)), sub,
             step_minutes=10)
m = stream_metrics(run, sub)
print(f"stream at publish threshold {publish:.3f}: precision {m['precision']:.3f} recall {m['recall']:.3f} "
      f"FPR {m['fpr']:.3f}, {m['flags_per_flagged_video']:.2f} flags per flagged video, "
      f"exact pattern naming {m['named_exact']:.2f}, {m['scorings']} scorings")"""),
    ("md", "## Time-series cross-validation (expanding windows, small models)"),
    ("code", """\
from training.dataset import make_split
from training.pipeline import TrainConfig, cross_validate

cfg = TrainConfig(seed=5, videos_per_week=120 if SMALL else 600, weeks=4, cv_folds=2, cv_epochs=2 if SMALL else 6)
weeks = [make_split(f"week{k}", simulate_week(cfg.seed, k, cfg.videos_per_week, texture=RealTexture("train")))
         for k in range(cfg.weeks)]
for fold in cross_validate(cfg, weeks):
    print(fold)"""),
]


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


NOTEBOOKS = {"01_exploration": NB01, "02_feature_engineering": NB02, "03_modeling": NB03, "04_evaluation": NB04}


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    os.environ["NOTEBOOK_SMALL"] = "1"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE.parent)}}).execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--execute", action="store_true", help="run each notebook (small-data mode) and keep its outputs")
    args = ap.parse_args(argv)
    for name, cells in NOTEBOOKS.items():
        nb = notebook(cells)
        if args.execute:
            print(f"executing {name} ...", flush=True)
            execute(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
