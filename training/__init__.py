"""Offline training package: simulate, train, evaluate and export ONNX model artifacts.

Uses torch; the simulator lives in the runtime (``stream_detector.dev.simulate``, numpy
only: the demo and ``replay --simulate`` use it too) and is imported from there. The runtime
never imports this package.
"""
