"""Convolutional autoencoder, trained on organic windows only.

Its hour score is the per-hour reconstruction error: ``log1p(mean_c (x - x_hat)^2)``.
``log1p`` is monotone (rankings and thresholds are unaffected) and tames the heavy tail of
squared errors so the calibrated scores are not dominated by a few huge spikes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_DOWNSAMPLE = 4


class ConvAutoencoder(nn.Module):
    """Features ``(N, C, W)`` -> per-hour reconstruction error ``(N, W)``.

    Encoder: conv(k5) then two stride-2 convolutions (W -> W/4) and a 1x1 bottleneck of
    ``latent`` channels; the decoder mirrors it with transposed convolutions. Any W works: the
    input is zero-padded on the right to a multiple of 4 and the output is cropped back.
    """

    def __init__(self, in_channels: int, hidden: int = 32, latent: int = 8) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1 or latent < 1:
            raise ValueError("in_channels, hidden and latent must be positive")
        self.hparams = {"in_channels": in_channels, "hidden": hidden, "latent": latent}
        self.encoder = nn.Sequential(
            nn.Conv1d(in_channels, hidden, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, latent, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv1d(latent, hidden, 1),
            nn.GELU(),
            nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1),
            nn.GELU(),
            nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, in_channels, 5, padding=2),
        )

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x``, same shape ``(N, C, W)``."""
        w = x.shape[-1]
        pad = (-w) % _DOWNSAMPLE
        h = F.pad(x, (0, pad)) if pad else x
        return self.decoder(self.encoder(h))[..., :w]

    def hour_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over channels of the squared reconstruction error, ``(N, W)`` (the loss)."""
        return (self.reconstruct(x) - x).pow(2).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.hour_error(x))
