"""Offline training package: simulate, train, evaluate and export ONNX model artifacts.

Uses torch; the service (``stream_detector``) never imports anything from here.
"""
