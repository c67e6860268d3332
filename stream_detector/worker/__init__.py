"""The worker, as parts whose responsibilities are visible (as faust's own services are built):

- ``context``: what every part shares (settings, metrics, clients, the dependency guard);
- ``model_slot``: the serving / pending / shadow models and their decisions;
- ``model_follower``: keeps the slot equal to the model registry's state, validated; it talks
  to the slot, never to the loops;
- ``event_clock``: event time per partition (high mark, watermark, open hour, idle closure);
  the one place that says which event hours are closed, or that it does not know yet;
- ``checkpoint``: applied offsets, commit order, persisted watermarks, state markers;
- ``ingest``: fetch → parse → windows → marks → dead letters (the consume side);
- ``marks``: which videos a written batch (or an idle partition) makes due, and when;
- ``rebuild``: a partition whose windows Redis lost, re-applied from the input topic and re-judged;
- ``scoring``: claim → score → decide → publish (the scoring side);
- ``quarantine``: videos whose judgement raised: bounded retries, then set aside;
- ``detector``: the composition with its lifecycle and tasks (consume, score, probe).

The faust App with the web views (``stream_detector.app``) composes a ``Detector``.
"""

from stream_detector.worker.detector import Detector

__all__ = ["Detector"]
