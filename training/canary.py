"""Build the canary set a worker checks every model against before it serves.

The service ships the set as a file (``stream_detector/canary.json``) rather than importing
the simulator: the worker image has no ``training`` package, and a fixed file keeps the
check stable when the simulator changes (a model's ``canary.min_auc`` was recorded against
this exact set's distribution). Regenerate on purpose only, with
``detector-train canary`` (and re-check the shipped model: ``stream-detector model inspect``).

The seed is disjoint from the training seeds (``week_seed`` = seed * 1000 + week).
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import numpy as np

from stream_detector.dev.simulate import simulate

CANARY_SEED = 31337
CANARY_VIDEOS = 200
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "stream_detector" / "canary.json"


def build_canary(videos: int = CANARY_VIDEOS, seed: int = CANARY_SEED) -> dict:
    from stream_detector.dev.texture import RealTexture

    # organic curves with real texture (the test pool: the canary is held-out data for every model)
    data = simulate(videos, seed=seed, id_prefix="canary-", texture=RealTexture("test"))
    counts = np.round(data.counts).astype("<u4")
    if not np.array_equal(counts, data.counts):
        raise ValueError("simulated counts do not fit uint32")
    return {
        "format": "stream-detector canary set",
        "version": 2,
        "generated_by": f"detector-train canary --videos {videos} --seed {seed} (real texture, test pool)",
        "seed": seed,
        "start_hour": int(data.start_hour),
        "video_ids": list(data.video_ids),
        "label": [int(x) for x in data.label],
        "pattern": list(data.pattern),
        "organic_kind": list(data.organic_kind),
        "published_hour": [int(x) for x in data.published_hour],
        "counts": {
            "dtype": "<u4",
            "shape": list(counts.shape),
            "encoding": "zlib+base64",
            "data": base64.b64encode(zlib.compress(counts.tobytes(), 9)).decode("ascii"),
        },
    }


def write_canary(path: str | Path = DEFAULT_PATH, videos: int = CANARY_VIDEOS, seed: int = CANARY_SEED) -> Path:
    path = Path(path)
    doc = build_canary(videos, seed)
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return path
