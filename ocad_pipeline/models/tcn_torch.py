"""The TCN forecaster (torch, training only) and its export to plain numpy arrays.

The model predicts the next *scaled* value of a univariate series from the last ``seq_len``
values. Each block is a causal dilated convolution (left padding only, so the output at step
``t`` sees inputs ``<= t``) with ReLU, dropout and a residual connection; the head reads the last
time step and predicts the *change* from the last input (``x[:, -1]`` skip term), which makes
beating the naive last-value forecast easy to learn.

:func:`export_tcn` + :func:`tcn_architecture` are everything ``ocad_detectors.tcn.NumpyTCN``
needs to reproduce the eval-mode forward pass without torch; both are checked against the
artifact contract (``ocad_detectors.artifacts.TCNArchitecture``), so a change of this module
that the numpy runtime would not understand fails at export, not at load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocad_detectors.artifacts import TCNArchitecture

__all__ = ["TCNBlock", "TCNForecaster", "export_tcn", "tcn_architecture", "count_parameters"]


class TCNBlock(nn.Module):
    """``y = dropout(relu(causal_conv(x))) + res(x)``; ``res`` is a 1x1 conv when channels change."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.left_pad = (kernel_size - 1) * dilation
        # padding=0 here; the causal (left-only) padding is applied in forward
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)
        self.res: nn.Conv1d | None = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, channels, time)
        y = self.conv(F.pad(x, (self.left_pad, 0)))
        y = self.dropout(torch.relu(y))
        return y + (x if self.res is None else self.res(x))


class TCNForecaster(nn.Module):
    """Causal TCN: ``(batch, seq_len)`` scaled window -> ``(batch,)`` next scaled value."""

    def __init__(
        self,
        seq_len: int,
        hidden_channels: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4),
        kernel_size: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if seq_len < 1 or hidden_channels < 1 or kernel_size < 1 or not dilations:
            raise ValueError("seq_len, hidden_channels, kernel_size must be >= 1 and dilations non-empty")
        if any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations must be >= 1, got {tuple(dilations)}")
        self.seq_len = int(seq_len)
        self.hidden_channels = int(hidden_channels)
        self.dilations = tuple(int(d) for d in dilations)
        self.kernel_size = int(kernel_size)
        self.blocks = nn.ModuleList(
            TCNBlock(1 if i == 0 else hidden_channels, hidden_channels, kernel_size, d, dropout)
            for i, d in enumerate(self.dilations)
        )
        self.head = nn.Linear(hidden_channels, 1)

    @property
    def receptive_field(self) -> int:
        """Number of most recent inputs the prediction can depend on."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.seq_len:
            raise ValueError(f"expected input of shape (batch, {self.seq_len}), got {tuple(x.shape)}")
        h = x.unsqueeze(1)  # (batch, 1, seq_len)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, :, -1]).squeeze(-1) + x[:, -1]


def export_tcn(model: TCNForecaster) -> dict[str, np.ndarray]:
    """All parameters as contiguous float32 arrays keyed by their ``state_dict`` name; raises
    ``ValueError`` when they are not exactly the tensors the artifact contract expects."""
    weights = {
        name: np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))
        for name, t in model.state_dict().items()
    }
    expected = TCNArchitecture(**tcn_architecture(model)).weight_shapes()
    got = {k: v.shape for k, v in weights.items()}
    if got != expected:
        diff = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
        raise ValueError(f"TCNForecaster state_dict does not match the artifact contract's tensors: {diff}")
    return weights


def tcn_architecture(model: TCNForecaster) -> dict[str, Any]:
    """The JSON-serialisable shape description ``NumpyTCN`` needs besides the weights
    (validated by ``TCNArchitecture``: bounds the runtime accepts)."""
    return TCNArchitecture(model.seq_len, model.hidden_channels, model.dilations, model.kernel_size).to_dict()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
