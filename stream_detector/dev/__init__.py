"""Development and trial tools that ship with the runtime (no torch, no ``training``):

- ``simulate``: the numpy simulator of organic engagement with injected fake patterns (the
  demo, ``replay --simulate`` and the training package all use it);
- ``embedded``: the embedded broker (Tansu) and redis-server for the demo and tests;
- ``demo``: ``stream-detector demo``; ``replay``: feeding events into the events topic.
"""
