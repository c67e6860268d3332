"""The scoring processes' heap policy, applied in a fresh interpreter (it changes the
process's allocator for good): large temporaries reuse mapped pages."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PAGES_PER_BATCH = 8 * 512 * 4 * 168 * 8 // 4096  # what one batch of temporaries touches: ~5,400 pages


def faults_per_batch(rounds: int = 10) -> float:
    """Minor page faults per batch of scoring-sized temporaries ((512, 4, 168) float64, eight
    of them, every page touched), after a first batch; run in the process under test."""
    import resource

    def batch() -> float:
        tmp = [np.ones((512, 4, 168)) for _ in range(8)]
        return sum(float(t[0, 0, 0]) for t in tmp)

    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        batch()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


PROBE = """
import json, sys
sys.path.insert(0, sys.argv[2])
from stream_detector import malloc_policy
applied = malloc_policy.apply(int(sys.argv[1]))
from test_malloc_policy import faults_per_batch
print(json.dumps({"applied": applied, "faults_per_batch": faults_per_batch(20)}))
"""


def _probe(keep_mb: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(keep_mb), str(Path(__file__).parent)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")


@glibc
def test_large_temporaries_reuse_the_heaps_pages():
    kept = _probe(256)
    assert kept["applied"] is True
    assert kept["faults_per_batch"] < PAGES_PER_BATCH / 20  # the pages stay mapped between batches


@glibc
def test_the_defaults_page_fault_every_batch_which_is_why_the_policy_exists():
    default = _probe(0)
    assert default["applied"] is False
    assert default["faults_per_batch"] > PAGES_PER_BATCH / 2  # fresh mappings, zero-filled again
