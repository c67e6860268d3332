"""Dilated residual temporal convolution network with a per-hour output head.

Convolutions are *centred* (non-causal): the scoring core re-scores whole windows, so each
hour may look at the hours after it as well as before. That localises better than a causal
stack: the end of a plateau, the drop after a spike, or a flat stretch that should have
decayed are only visible with right-hand context, and a causal model would smear its score
to the hours after the anomaly. The price is that the newest hours of a window only see the
past (zero padding on the right); they are rescored as later hours arrive.
"""

from __future__ import annotations

import torch
from torch import nn


class _ResidualBlock(nn.Module):
    """conv(d) -> GELU -> dropout -> conv(d) -> GELU -> dropout, plus the identity."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2 * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad, dilation=dilation)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.conv1(x)))
        h = self.drop(self.act(self.conv2(h)))
        return x + h


class TCN(nn.Module):
    """Features ``(N, C, W)`` -> per-hour logits ``(N, W)``.

    ``levels`` residual blocks with dilations 1, 2, 4, ... (two convolutions each), so the
    receptive field is ``1 + 2 * (kernel_size - 1) * (2**levels - 1)`` hours, centred: 125
    hours (+-62) with the defaults. A window-level context vector (mean over hours of the
    last hidden layer) is added to every hour before the head, so each hour is also judged
    against the whole window (the video's own level and rhythm).
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 32,
        levels: int = 5,
        kernel_size: int = 3,
        dropout: float = 0.1,
        context: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd for centred convolutions")
        if in_channels < 1 or hidden < 1 or levels < 1:
            raise ValueError("in_channels, hidden and levels must be positive")
        self.hparams = {
            "in_channels": in_channels,
            "hidden": hidden,
            "levels": levels,
            "kernel_size": kernel_size,
            "dropout": dropout,
            "context": context,
        }
        self.receptive_field = 1 + 2 * (kernel_size - 1) * (2**levels - 1)
        self.inp = nn.Conv1d(in_channels, hidden, 1)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden, kernel_size, 2**i, dropout) for i in range(levels)]
        )
        self.context = nn.Linear(hidden, hidden) if context else None
        self.head = nn.Sequential(nn.Conv1d(hidden, hidden, 1), nn.GELU(), nn.Conv1d(hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x))
        if self.context is not None:
            h = h + self.context(h.mean(dim=2)).unsqueeze(2)
        return self.head(h).squeeze(1)
