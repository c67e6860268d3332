"""Recurrent baseline: a (bi-)LSTM over the hours of the window with a per-hour head."""

from __future__ import annotations

import torch
from torch import nn


class LSTMBaseline(nn.Module):
    """Features ``(N, C, W)`` -> per-hour logits ``(N, W)``.

    Bidirectional by default for the same reason the TCN is centred: whole windows are
    re-scored, and the hours after an anomaly help to localise it.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 32,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1 or layers < 1:
            raise ValueError("in_channels, hidden and layers must be positive")
        self.hparams = {
            "in_channels": in_channels,
            "hidden": hidden,
            "layers": layers,
            "bidirectional": bidirectional,
            "dropout": dropout,
        }
        self.lstm = nn.LSTM(
            in_channels,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(1, 2))  # (N, W, H)
        return self.head(out).squeeze(2)
