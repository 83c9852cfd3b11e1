"""Single-window forward pass of several same-shaped TCNs at once, for the streaming path.

An endpoint sample carries up to three delay signals and each has its own TCN; calling
``NumpyTCN.predict`` three times per sample costs three rounds of numpy call overhead, which
dominates at this size. Here the M models are fused into one network with block-diagonal
weights (model m only reads and writes its own channel block), so one gather + one matmul
per block serves all of them. Zeros in the off-diagonal blocks add exact zeros, so each
model's output equals its own forward pass up to the summation order inside the matrix
product (a few ulp; the batch path uses ``NumpyTCN`` and results agree to ~1e-15).

Only the time steps inside the receptive field of the last output are evaluated (the same
backward plan as ``ocad_detectors.tcn``). Buffers are reused between calls, so an instance
must not be used by two threads at once (the pipeline serialises samples).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ocad_detectors.tcn import tcn_weight_shapes

__all__ = ["StackedTCN"]


class _Block:
    """One block for all M models: gather plan, weights with the bias folded in, buffers.

    Activations carry an extra constant-1 column (biases become weight rows) and a trailing
    all-zero pad row that stands for the steps before the window (the causal zero padding);
    the bias row sits on the tap at ``t``, which is never padded.
    """

    __slots__ = ("c", "g", "gather", "n_out", "out", "res_conv", "res_lo", "w", "z")

    def __init__(self, gather: np.ndarray, w: np.ndarray, c: int, res_conv: bool, res_lo: int, m: int) -> None:
        self.gather = gather
        self.n_out, k = gather.shape
        self.w = w  # (M, k * (c_in + 1), c [+ c for a 1x1 residual conv])
        self.c = c
        self.res_conv = res_conv
        self.res_lo = res_lo  # identity residual: first im2col column of the tap at t
        width = w.shape[1] // k
        self.g = np.empty((m, self.n_out, k, width))
        self.z = np.empty((m, self.n_out, w.shape[2]))
        self.out = np.zeros((m, self.n_out + 1, c + 1))
        self.out[:, : self.n_out, c] = 1.0


class StackedTCN:
    """``predict_one((seq_len, M)) -> (M,)``: the next scaled value of M windows, one per model."""

    def __init__(self, weights: Sequence[Mapping[str, np.ndarray]], architecture: Mapping[str, Any]) -> None:
        self.n_models = M = len(weights)
        if M == 0:
            raise ValueError("StackedTCN needs at least one model")
        L = self.seq_len = int(architecture["seq_len"])
        c = int(architecture["hidden_channels"])
        k = int(architecture["kernel_size"])
        dil = [int(d) for d in architecture["dilations"]]
        shapes = tcn_weight_shapes(architecture)
        for wts in weights:
            for name, shape in shapes.items():
                if name not in wts or tuple(np.shape(wts[name])) != shape:
                    raise ValueError(f"TCN tensor {name!r} missing or not of shape {shape}")
        W = [{n: np.asarray(a, dtype=np.float64) for n, a in wts.items()} for wts in weights]

        # backward plan: which steps each block must produce
        out_steps = [L - 1]
        plans = []
        for i in range(len(dil) - 1, -1, -1):
            d = dil[i]
            taps = [[t - (k - 1 - j) * d for j in range(k)] for t in out_steps]
            in_steps = sorted({s for row in taps for s in row if s >= 0})
            plans.append((in_steps, taps))
            out_steps = in_steps
        plans.reverse()

        self._input = np.zeros((M, L + 1, 2))  # (value, 1) per step + pad row
        self._input[:, :L, 1] = 1.0
        self._blocks: list[_Block] = []
        for i, (in_steps, taps) in enumerate(plans):
            if i == 0:
                in_steps = list(range(L))
            pos = {s: p for p, s in enumerate(in_steps)}
            pad = len(in_steps)
            gather = np.asarray([[pos.get(s, pad) for s in row] for row in taps], dtype=np.intp)
            c_in = 1 if i == 0 else c
            width = c_in + 1
            res_conv = c_in != c
            w = np.zeros((M, k * width, 2 * c if res_conv else c))
            bias_row = (k - 1) * width + c_in
            for m in range(M):
                conv = W[m][f"blocks.{i}.conv.weight"]  # (c, c_in, k)
                for j in range(k):
                    w[m, j * width : j * width + c_in, :c] = conv[:, :, j].T
                w[m, bias_row, :c] = W[m][f"blocks.{i}.conv.bias"]
                if res_conv:
                    w[m, (k - 1) * width : (k - 1) * width + c_in, c:] = W[m][f"blocks.{i}.res.weight"][:, :, 0].T
                    w[m, bias_row, c:] = W[m][f"blocks.{i}.res.bias"]
            self._blocks.append(_Block(gather, w, c, res_conv, (k - 1) * width, M))
        head = np.zeros((M, c + 1))
        for m in range(M):
            head[m, :c] = W[m]["head.weight"][0]
            head[m, c] = W[m]["head.bias"][0]
        self._head = head

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """``x``: scaled windows as ``(seq_len, M)`` (column m for model m) -> ``(M,)``."""
        h = self._input
        h[:, : self.seq_len, 0] = x.T
        m = self.n_models
        for blk in self._blocks:
            np.take(h, blk.gather, axis=1, out=blk.g)
            g = blk.g.reshape(m, blk.n_out, -1)
            z = np.matmul(g, blk.w, out=blk.z)
            c = blk.c
            act = blk.out[:, : blk.n_out, :c]
            np.maximum(z[:, :, :c], 0.0, out=act)
            if blk.res_conv:
                act += z[:, :, c:]
            else:
                act += g[:, :, blk.res_lo : blk.res_lo + c]
            h = blk.out
        return (h[:, 0, :] * self._head).sum(axis=1) + x[self.seq_len - 1]
