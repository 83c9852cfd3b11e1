"""Numpy forward pass of the TCN forecaster exported by ``ocad_pipeline.models.tcn_torch``.

Online inference must not import torch, so this module re-implements the eval-mode forward pass
(dropout is the identity) from the exported arrays. Only the prediction at the last time step
is needed, so instead of convolving the whole window each block evaluates just the time steps
inside the receptive field of that last output (im2col gather + one matmul per block). All
index plans and float64 weight matrices are built once in ``__init__``; ``predict`` only
gathers and multiplies (into reused per-thread buffers in batch mode), which keeps a single
window around 15 µs and batches near a million windows per second.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NumpyTCN", "tcn_weight_shapes"]

#: windows evaluated per chunk in batch mode: keeps the intermediate im2col arrays in cache
_CHUNK = 512


def tcn_weight_shapes(architecture: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The exact tensor names and shapes a TCN with this architecture has (torch layout)."""
    hidden = int(architecture["hidden_channels"])
    k = int(architecture["kernel_size"])
    shapes: dict[str, tuple[int, ...]] = {}
    for i, _ in enumerate(architecture["dilations"]):
        c_in = 1 if i == 0 else hidden
        shapes[f"blocks.{i}.conv.weight"] = (hidden, c_in, k)
        shapes[f"blocks.{i}.conv.bias"] = (hidden,)
        if c_in != hidden:
            shapes[f"blocks.{i}.res.weight"] = (hidden, c_in, 1)
            shapes[f"blocks.{i}.res.bias"] = (hidden,)
    shapes["head.weight"] = (1, hidden)
    shapes["head.bias"] = (1,)
    return shapes


@dataclass(frozen=True)
class _Layer:
    """One block, reduced to the time steps the final output needs.

    Every activation row carries an extra constant-1 column (biases become matmul rows) and
    every layer input has one trailing all-zero *pad row* standing for steps before the window.
    A row whose taps all hit the pad row therefore comes out exactly zero, so the pad row
    propagates through matmul + ReLU + residual with no extra work per call.
    """

    #: (n_rows, k) row indices into the previous activations (n_in = the pad row)
    gather: np.ndarray
    #: (k * (c_in + 1), c_out + 1 [+ c_out + 1]) conv (+ 1x1 residual conv) weights incl. biases
    weight: np.ndarray
    #: columns of one tap in the input: c_in + 1
    tap_width: int
    #: True: residual is the 1x1 conv in the extra columns; False: identity on the tap at t
    res_conv: bool
    #: first im2col column of the tap at time t (read by the identity residual)
    res_offset: int


class NumpyTCN:
    """Eval-mode TCN forecaster: ``predict((batch, seq_len)) -> (batch,)`` next scaled values."""

    def __init__(self, weights: Mapping[str, np.ndarray], architecture: Mapping[str, Any]) -> None:
        try:
            self.seq_len = int(architecture["seq_len"])
            self.hidden_channels = int(architecture["hidden_channels"])
            self.kernel_size = int(architecture["kernel_size"])
            self.dilations = tuple(int(d) for d in architecture["dilations"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                "architecture needs integer seq_len, hidden_channels, kernel_size and a list "
                f"of dilations; got {dict(architecture)!r}"
            ) from exc
        if min(self.seq_len, self.hidden_channels, self.kernel_size) < 1 or not self.dilations:
            raise ValueError(f"invalid TCN architecture {dict(architecture)!r}")
        if min(self.dilations) < 1:
            raise ValueError(f"dilations must be >= 1, got {self.dilations}")

        expected = tcn_weight_shapes(architecture)
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            raise ValueError(f"TCN weights: missing tensors {missing}, unexpected tensors {unexpected}")
        w: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            arr = np.asarray(weights[name])
            if arr.shape != shape:
                raise ValueError(f"TCN tensor {name!r}: expected shape {shape}, got {arr.shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"TCN tensor {name!r}: expected a float dtype, got {arr.dtype}")
            w[name] = arr.astype(np.float64)
            if not np.all(np.isfinite(w[name])):
                raise ValueError(f"TCN tensor {name!r} contains NaN or infinity")

        self.receptive_field = 1 + sum((self.kernel_size - 1) * d for d in self.dilations)
        self._layers = self._plan(w)
        c = self.hidden_channels
        head = np.empty(c + 1)
        head[:c] = w["head.weight"][0]
        head[c] = w["head.bias"][0]  # multiplies the constant-1 column
        self._head = head
        # single-window input template: rows = time steps + pad row, columns = (value, 1)
        self._input_template = np.zeros((self.seq_len + 1, 2))
        self._input_template[: self.seq_len, 1] = 1.0
        self._local = threading.local()

    def _plan(self, w: Mapping[str, np.ndarray]) -> list[_Layer]:
        """Walk backwards from the last step to find which steps each block must compute."""
        k, c, n_blocks = self.kernel_size, self.hidden_channels, len(self.dilations)
        out_steps = [self.seq_len - 1]
        step_plans: list[tuple[list[int], list[list[int]]]] = []
        for i in range(n_blocks - 1, -1, -1):
            d = self.dilations[i]
            taps = [[t - (k - 1 - j) * d for j in range(k)] for t in out_steps]
            in_steps = sorted({s for row in taps for s in row if s >= 0})
            step_plans.append((in_steps, taps))
            out_steps = in_steps
        step_plans.reverse()

        layers: list[_Layer] = []
        for i, (in_steps, taps) in enumerate(step_plans):
            if i == 0:
                in_steps = list(range(self.seq_len))  # the raw window is stored whole
            pos = {s: p for p, s in enumerate(in_steps)}
            pad = len(in_steps)
            rows = [[pos.get(s, pad) for s in row] for row in taps]
            if i < n_blocks - 1:
                rows.append([pad] * k)  # output pad row for the next layer
            c_in = 1 if i == 0 else c
            width = c_in + 1
            conv_w = w[f"blocks.{i}.conv.weight"]  # (c_out, c_in, k)
            res_conv = f"blocks.{i}.res.weight" in w
            mat = np.zeros((k * width, (2 if res_conv else 1) * (c + 1)))
            for j in range(k):
                mat[j * width : j * width + c_in, :c] = conv_w[:, :, j].T
            bias_row = (k - 1) * width + c_in  # the 1-column of the tap at t is never padded
            mat[bias_row, :c] = w[f"blocks.{i}.conv.bias"]
            # column c (the 1-column) stays 0 before ReLU; the residual supplies the 1
            if res_conv:
                mat[(k - 1) * width : (k - 1) * width + c_in, c + 1 : 2 * c + 1] = (
                    w[f"blocks.{i}.res.weight"][:, :, 0].T
                )
                mat[bias_row, c + 1 : 2 * c + 1] = w[f"blocks.{i}.res.bias"]
                mat[bias_row, 2 * c + 1] = 1.0
            layers.append(
                _Layer(
                    gather=np.asarray(rows, dtype=np.intp),
                    weight=np.ascontiguousarray(mat),
                    tap_width=width,
                    res_conv=res_conv,
                    res_offset=(k - 1) * width,
                )
            )
        return layers

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict the next scaled value for each window.

        ``x``: ``(batch, seq_len)`` or a single ``(seq_len,)`` window of scaled values.
        Returns float64 of shape ``(batch,)`` (``(1,)`` for a single window).
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 1 and arr.shape[0] == self.seq_len:
            h = self._input_template.copy()
            h[: self.seq_len, 0] = arr
            return self._forward_single(h, arr)
        if arr.ndim != 2 or arr.shape[1] != self.seq_len:
            raise ValueError(
                f"expected windows of shape (batch, {self.seq_len}) or ({self.seq_len},), "
                f"got {np.shape(x)}"
            )
        n = arr.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        ws = self._workspace(min(n, _CHUNK))
        for start in range(0, n, _CHUNK):
            xs = arr[start : start + _CHUNK]
            out[start : start + xs.shape[0]] = self._forward_batch(xs, ws)
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.predict(x)

    def _forward_single(self, h: np.ndarray, x: np.ndarray) -> np.ndarray:
        """One window: ``h`` is the (seq_len + 1, 2) input with 1-column and pad row."""
        c1 = self.hidden_channels + 1
        for layer in self._layers:
            g = h[layer.gather].reshape(layer.gather.shape[0], -1)
            z = g @ layer.weight
            a = np.maximum(z[:, :c1], 0.0)
            a += z[:, c1:] if layer.res_conv else g[:, layer.res_offset :]
            h = a
        # the last block computed exactly one row (time step seq_len - 1)
        return h @ self._head + x[-1]

    def _workspace(self, capacity: int) -> list[np.ndarray]:
        """Per-thread scratch buffers for ``capacity`` windows.

        Reusing them across chunks and calls avoids allocating (and page-faulting) several MB
        per chunk, which otherwise costs more than the arithmetic.
        """
        ws: list[np.ndarray] | None = getattr(self._local, "ws", None)
        if ws is None or ws[0].shape[0] < capacity:
            ws = [np.zeros((capacity, self.seq_len + 1, 2))]
            ws[0][:, : self.seq_len, 1] = 1.0  # the 1-column; the pad row stays 0
            c1 = self.hidden_channels + 1
            for layer in self._layers:
                n_rows, k = layer.gather.shape
                ws.append(np.empty((capacity, n_rows, k, layer.tap_width)))  # im2col
                ws.append(np.empty((capacity * n_rows, layer.weight.shape[1])))  # matmul
                ws.append(np.empty((capacity, n_rows, c1)))  # activations
            self._local.ws = ws
        return ws

    def _forward_batch(self, x: np.ndarray, ws: list[np.ndarray]) -> np.ndarray:
        b = x.shape[0]
        c1 = self.hidden_channels + 1
        h = ws[0][:b]
        h[:, : self.seq_len, 0] = x
        for i, layer in enumerate(self._layers):
            n_rows, k = layer.gather.shape
            g4 = ws[1 + 3 * i][:b]
            np.take(h, layer.gather, axis=1, out=g4, mode="clip")  # indices are valid
            g = g4.reshape(b * n_rows, k * layer.tap_width)
            z = ws[2 + 3 * i][: b * n_rows]
            np.matmul(g, layer.weight, out=z)
            h = ws[3 + 3 * i][:b]
            a = h.reshape(b * n_rows, c1)
            np.maximum(z[:, :c1], 0.0, out=a)
            a += z[:, c1:] if layer.res_conv else g[:, layer.res_offset :]
        # the last block computed exactly one row (time step seq_len - 1)
        return h[:, 0, :] @ self._head + x[:, -1]
