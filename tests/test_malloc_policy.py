"""The heap policy of the worker and its scoring processes, applied in a fresh interpreter (it
changes the process's allocator for good): large temporaries reuse mapped pages."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

# Allocates and frees (512, 4, 168) float64 arrays as a scoring batch does, touching every
# page, and counts the minor page faults of the rounds after the first.
PROBE = """
import json, resource, sys
import numpy as np
from stream_detector import malloc_policy
applied = malloc_policy.apply(int(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():
    tmp = [np.ones((512, 4, 168)) for _ in range(8)]
    return sum(float(t[0, 0, 0]) for t in tmp)
batch()
before = faults()
for _ in range(20):
    batch()
print(json.dumps({"applied": applied, "faults_per_round": (faults() - before) / 20}))
"""

PAGES_PER_ROUND = 8 * 512 * 4 * 168 * 8 // 4096  # what a round touches: ~5,400 pages


def _probe(keep_mb: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(keep_mb)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(ctypes.util.find_library("c") is None or "glibc" not in " ".join(
    __import__("platform").libc_ver()), reason="the policy is glibc's mallopt")


@glibc
def test_large_temporaries_reuse_the_heaps_pages():
    kept = _probe(256)
    assert kept["applied"] is True
    assert kept["faults_per_round"] < PAGES_PER_ROUND / 20  # the pages stay mapped between batches


@glibc
def test_the_defaults_page_fault_every_batch_which_is_why_the_policy_exists():
    default = _probe(0)
    assert default["applied"] is False
    assert default["faults_per_round"] > PAGES_PER_ROUND / 2  # fresh mappings, zero-filled again
