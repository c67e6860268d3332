"""The worker's collector policy, applied in a fresh interpreter (it freezes the process)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from stream_detector import gc_policy
before = gc.get_threshold()
applied = gc_policy.apply(int(sys.argv[1]))
print(json.dumps({"before": before, "applied": applied, "now": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def _probe(young: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(young)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_a_young_threshold_freezes_start_up_and_sets_the_thresholds():
    got = _probe(50_000)
    assert got["applied"] == got["now"] == [50_000, 20, 100]
    assert got["frozen"] > 1000  # the modules start-up imported are out of every collection


def test_zero_keeps_cpythons_defaults():
    got = _probe(0)
    assert got["applied"] == got["now"] == got["before"]
    assert got["frozen"] == 0
