"""Model zoo: every architecture maps features ``(N, C, W)`` to ``hour_score`` ``(N, W)``.

Higher = more anomalous. Supervised models output per-hour logits; the autoencoder outputs
per-hour reconstruction error. The scoring core calibrates either, so they are
interchangeable in an ONNX artifact.
"""

from __future__ import annotations

from torch import nn

from training.models.autoencoder import ConvAutoencoder
from training.models.lstm import LSTMBaseline
from training.models.tcn import TCN

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "tcn": TCN,
    "autoencoder": ConvAutoencoder,
    "lstm": LSTMBaseline,
}

_UNSUPERVISED = frozenset({"autoencoder"})


def _check(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")


def build_model(arch: str, in_channels: int, **kw: object) -> nn.Module:
    """Instantiate ``arch`` for ``in_channels`` feature channels (extra hyper-parameters in kw)."""
    _check(arch)
    return ARCHITECTURES[arch](in_channels, **kw)


def is_supervised(arch: str) -> bool:
    """True if ``arch`` trains on hour labels; False for the organic-only autoencoder."""
    _check(arch)
    return arch not in _UNSUPERVISED


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHITECTURES",
    "TCN",
    "ConvAutoencoder",
    "LSTMBaseline",
    "build_model",
    "count_parameters",
    "is_supervised",
]
