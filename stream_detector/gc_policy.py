"""Garbage-collector settings for the consume loop.

Why: the hot path allocates several container objects per event (records, decoded events,
tuples), most alive for a whole batch of thousands. With CPython's default young-generation
threshold (700) a collection runs every few hundred events and re-scans everything a batch
still holds: ~30 % of the consume loop's CPU (bench/throughput.py, paired runs: 17.3 ms per 1k
events with the default, 11.6 with collection off). A high young threshold
keeps cycles collected (memory stays bounded: at most ``young`` uncollected young objects, a
few tens of MB) at a small fraction of the cost; freezing what start-up loaded (modules, the
model, settings) keeps the full collections from walking it again and again.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("stream_detector.gc_policy")

MIDDLE_THRESHOLD = 20  # young collections per middle-generation collection
OLD_THRESHOLD = 100  # middle collections per full collection (CPython also waits for 25 % growth)


def apply(young: int) -> tuple[int, int, int]:
    """Freeze what is alive now and set the collector's thresholds; ``young`` 0 keeps
    CPython's defaults (and freezes nothing). Returns the thresholds in force."""
    if young <= 0:
        return gc.get_threshold()
    gc.collect()  # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(young, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    log.info("gc: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
    return gc.get_threshold()
