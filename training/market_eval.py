"""Quality on fraud as panels sell it, per delivery kind, amplitude band and organic look-alike.

The stream process as deployed (``stream_eval.replay``: minute-level events, closed hours,
the immediate path, the decision process, ever-flagged) on a held-out ``dev/market.py`` week,
with real texture from the test pool. The tables are what the report, the README and
``bench/market_quality.py`` print.
"""

from __future__ import annotations

import numpy as np

from stream_detector.dev.market import (
    DELIVERY_KINDS,
    LOOKALIKE_KINDS,
    MarketDataset,
    simulate_market,
)
from stream_detector.dev.texture import RealTexture
from training.stream_eval import replay, stream_metrics

PLAIN_KINDS = ("regular", "real_textured", "viral", "news", "other_timezone", "seasonal", "sparse")


def market_week(videos: int, seed: int, *, texture: str | None = "test", start_hour: int | None = None,
                id_prefix: str = "m") -> MarketDataset:
    return simulate_market(videos, seed=seed, texture=RealTexture(texture) if texture else None,
                           start_hour=start_hour, id_prefix=id_prefix)


def evaluate_market(scorer, decision, data: MarketDataset, *, step_minutes: int = 10) -> dict:
    """The stream process over ``data``: ``stream_metrics`` plus per-kind counts."""
    run = replay(scorer, decision, data, step_minutes=step_minutes)
    m = stream_metrics(run, data)
    labels = np.asarray(data.label, dtype=bool)
    kinds = np.array([data.kind_of(i) for i in range(len(data))])
    m["kind_counts"] = {k: int((kinds == k).sum()) for k in sorted(set(kinds.tolist()))}
    organic = ~labels
    lookalike = organic & np.array([bool(x) for x in data.lookalike])
    ever = np.array([bool(p) for p in run.published])
    m["fpr_lookalikes"] = float(ever[lookalike].mean()) if lookalike.any() else None
    m["fpr_plain"] = float(ever[organic & ~lookalike].mean()) if (organic & ~lookalike).any() else None
    m["seconds"] = run.seconds
    return m


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _names_as(given: dict | None, top: int = 3) -> str:
    """The most frequent names a kind's flags gave, e.g. ``drip_feed 9, decay_violation 4``."""
    if not given:
        return ""
    return ", ".join(f"{name or '(none)'} {c}" for name, c in list(given.items())[:top])


def markdown(m: dict) -> str:
    """Per-kind and per-band tables of one ``evaluate_market`` result."""
    kinds = [k for k in DELIVERY_KINDS if k in m.get("recall_by_kind", {})]
    looks = [k for k in LOOKALIKE_KINDS if k in m["fpr_by_kind"]]
    plain = [k for k in PLAIN_KINDS if k in m["fpr_by_kind"]]
    n = m["kind_counts"]
    lines = [
        f"{m['videos']} videos, {m['fakes']} fake; precision {m['precision']:.3f}, recall {m['recall']:.3f} "
        f"(>= 1x the video's own level: {_f(m.get('recall_1x_or_more'))}), organic FPR {m['fpr']:.3f} "
        f"(look-alikes {_f(m.get('fpr_lookalikes'))}, plain {_f(m.get('fpr_plain'))}); fake hours within "
        f"+-1 h {m['hours_localised']:.3f}; named exactly {m['named_exact']:.3f}.",
        "",
        "| delivery kind | videos | recall | recall >= 1x | named exactly | named as (flagged videos) |",
        "|---|---|---|---|---|---|",
    ]
    for k in kinds:
        lines.append(f"| {k} | {n.get(k, 0)} | {_f(m['recall_by_kind'].get(k))} | "
                     f"{_f(m['recall_by_kind_1x'].get(k))} | {_f(m['named_exact_by_kind'].get(k))} | "
                     f"{_names_as(m.get('names_by_kind', {}).get(k))} |")
    lines += ["", "| amplitude band | " + " | ".join(m["recall_by_band"]) + " |",
              "|---|" + "---|" * len(m["recall_by_band"]),
              "| recall | " + " | ".join(f"{v:.2f}" for v in m["recall_by_band"].values()) + " |", "",
              "| organic kind | videos | FPR (ever flagged) |", "|---|---|---|"]
    for k in looks + plain:
        lines.append(f"| {k}{' (look-alike)' if k in looks else ''} | {n.get(k, 0)} | {m['fpr_by_kind'][k]:.2f} |")
    return "\n".join(lines)
