"""Offline training package: simulate, train, evaluate and export ONNX model artifacts.

Uses torch, except ``training.simulate`` (numpy only), which the service's demo and
``replay --simulate`` also use; the service never imports the torch parts.
"""
