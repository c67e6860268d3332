"""Faults injected from outside into a real worker process (tests only; never on a real path).

A test puts this directory first on ``PYTHONPATH`` and names the fault in ``SD_INJECT_FAULT``;
Python imports this module at start-up in the worker and in its scoring children, and once the
named function's module is imported, the function raises a real exception as the worker runs:

- ``poison:<prefix>``: scoring a batch that holds a video whose id starts with <prefix> raises
  ``KeyError`` in the scoring core (``Scorer.score_windows``), every time, in every process: a
  poison in the data, as the ``_names`` bug was;
- ``<loop>:<n>``: the n-th call (and every later one) of the function the loop runs raises
  ``RuntimeError``: ``consume`` (``Ingest.write``), ``cadence`` (``ScoringLoop.score_cadence``),
  ``immediate`` (``ScoringLoop.score_immediate``), ``probe`` (``Detector._probe_broker``),
  ``verdicts`` (``VerdictFollower.take``, the moderation loop's follower), ``accounts``
  (``AccountLoop.judge``, the user level's lane).

Nothing of the loops is replaced: the functions they call raise, and the loops meet it as
they would meet a bug.
"""

from __future__ import annotations

import builtins
import os
import sys

_SPEC = os.environ.get("SD_INJECT_FAULT", "")
_TARGETS = {  # fault -> (module, class, method)
    "poison": ("stream_detector.scoring", "Scorer", "score_windows"),
    "consume": ("stream_detector.worker.ingest", "Ingest", "write"),
    "cadence": ("stream_detector.worker.scoring", "ScoringLoop", "score_cadence"),
    "immediate": ("stream_detector.worker.scoring", "ScoringLoop", "score_immediate"),
    "probe": ("stream_detector.worker.detector", "Detector", "_probe_broker"),
    "verdicts": ("stream_detector.worker.verdicts", "VerdictFollower", "take"),
    "accounts": ("stream_detector.worker.accounts", "AccountLoop", "judge"),
}


def _patch(kind: str, arg: str, cls: type, name: str) -> None:
    original = getattr(cls, name)
    if kind == "poison":
        def score_windows(self, video_ids, *a, **k):
            if any(str(v).startswith(arg) for v in video_ids):
                raise KeyError("decay_violation")
            return original(self, video_ids, *a, **k)
        setattr(cls, name, score_windows)
        return
    calls = {"n": 0}

    async def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] >= int(arg):
            raise RuntimeError(f"injected fault in the {kind} loop (call {calls['n']})")
        return await original(self, *a, **k)
    setattr(cls, name, failing)


if _SPEC:
    _kind, _, _arg = _SPEC.partition(":")
    _module, _class, _method = _TARGETS[_kind]
    _import = builtins.__import__

    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        target = sys.modules.get(_module)
        if target is not None and hasattr(target, _class) and not _hook.done:
            _hook.done = True
            builtins.__import__ = _import
            _patch(_kind, _arg, getattr(target, _class), _method)
        return module

    _hook.done = False
    builtins.__import__ = _hook
