"""Build a real (tiny) model registry for detector tests and the benchmark, in numpy only.

The artifacts go through the artifact contract (:mod:`ocad_detectors.artifacts`), exactly like
the trainers' output: a TCN forecaster per metric and an Isolation Forest per capability group
fitted on ``features_frame`` output, with reference statistics, scalers, residual scales and
thresholds in the metadata. Fitting is numpy (no torch, no scikit-learn), so the detector tests
run in a light install:

* TCN (:func:`fit_tcn_numpy`): seeded random causal convolutions (torch's default init ranges)
  and a least-squares head on their last-step features, i.e. a random-feature forecaster of the
  change from the last value; its forecasts come from ``NumpyTCN``, the served runtime;
* Isolation Forest (:func:`fit_forest_numpy`): Liu et al.'s isolation trees (random feature,
  uniform threshold between the node's min and max, depth limit ``ceil(log2(max_samples))``)
  in the export layout of ``ocad_pipeline.models.iforest_export``.

Everything is seeded, so two builds give the same models. The benchmark passes torch /
scikit-learn fitters instead (``benchmarks/reference_models.py``) to compare runtimes against
the originals.

Import it from tests as ``from model_fixtures import build_model_registry`` (pytest puts the
tests directory on ``sys.path``).
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocad_detectors.artifacts import (
    IFGroupSpec,
    IFMetadata,
    IForestArtifact,
    ResidualScale,
    Scaler,
    TCNArchitecture,
    TCNArtifact,
    TCNMetadata,
    tcn_model_name,
)
from ocad_detectors.features import FeatureConfig, ReferenceStats, features_frame, model_feature_names, model_matrix
from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.registry import ModelRegistry
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, VALUE_SIGNALS
from ocad_pipeline.simulator import SimulatedData, SimulatorConfig, simulate

#: fleet used by default: every capability group of the simulator, 12 h, all incident types.
#: Pinned to the clean profile: the tests built on it assert which detectors fire on the
#: clean simulator's large incidents (to be re-pointed once the detectors hold on "realistic").
FIXTURE_SIM = SimulatorConfig(
    n_oru=4, n_odu=1, n_transport=2, duration_hours=12.0, incidents_per_endpoint_day=20.0, seed=11, profile="clean"
)

#: ``(X, y, architecture, epochs, seed) -> (weights, original)``: fit a forecaster on scaled
#: windows ``X`` (n, seq_len) -> next value ``y`` (n,); ``original`` is whatever the fitter
#: wants to hand back besides the exported weights (the torch module; None for numpy)
TCNFitter = Callable[[np.ndarray, np.ndarray, TCNArchitecture, int, int], tuple[dict[str, np.ndarray], Any]]
#: ``(X, n_trees, max_samples, seed) -> (arrays, original)``: fit a forest on scaled features
ForestFitter = Callable[[np.ndarray, int, "int | str", int], tuple[dict[str, np.ndarray], Any]]


@dataclass
class BuiltModels:
    root: Path
    sim: SimulatedData
    train: pd.DataFrame  # the samples the models were fitted on (first 70 % per endpoint)
    test: pd.DataFrame  # the rest, for replay
    capabilities: dict[str, set[str]]
    reference: ReferenceStats
    feature_config: FeatureConfig
    versions: dict[str, str]
    #: what the fitters returned besides the arrays, per metric / capability group (None for
    #: the numpy fitters; the torch modules / sklearn forests for the benchmark's fitters)
    tcn_originals: dict[str, Any]
    forest_originals: dict[str, Any]


def _split(samples: pd.DataFrame, frac: float = 0.7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rank = samples.groupby("endpoint_id").cumcount()
    size = samples.groupby("endpoint_id")["timestamp_ms"].transform("size")
    first = rank < (size * frac).astype(int)
    return samples[first].reset_index(drop=True), samples[~first].reset_index(drop=True)


def healthy_windows(
    series: list[np.ndarray], seq_len: int, mean: float, std: float, seed: int, max_windows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scaled NaN-free ``(X, y)`` windows of several series (NaN marks anomalous samples)."""
    xs, ys = [], []
    for s in series:
        if len(s) <= seq_len:
            continue
        win = np.lib.stride_tricks.sliding_window_view(s, seq_len + 1)
        ok = np.isfinite(win).all(axis=1)
        win = (win[ok] - mean) / std
        xs.append(win[:, :seq_len])
        ys.append(win[:, seq_len])
    xa, ya = np.concatenate(xs), np.concatenate(ys)
    if max_windows is not None and len(xa) > max_windows:
        pick = np.random.default_rng(seed).choice(len(xa), max_windows, replace=False)
        xa, ya = xa[pick], ya[pick]
    return xa, ya


def _last_hidden(w: dict[str, np.ndarray], arch: TCNArchitecture, X: np.ndarray) -> np.ndarray:
    """Hidden activations at the last time step, (n, hidden): a direct numpy transcription of
    ``TCNForecaster.forward`` (causal left padding, ReLU, residual) without the head."""
    h = X[:, None, :].astype(np.float64)
    L, k = arch.seq_len, arch.kernel_size
    for i, d in enumerate(arch.dilations):
        conv = w[f"blocks.{i}.conv.weight"].astype(np.float64)
        pad = np.pad(h, ((0, 0), (0, 0), ((k - 1) * d, 0)))
        y = sum(np.einsum("oc,nct->not", conv[:, :, j], pad[:, :, j * d : j * d + L]) for j in range(k))
        y = np.maximum(y + w[f"blocks.{i}.conv.bias"][None, :, None], 0.0)
        if f"blocks.{i}.res.weight" in w:
            res = np.einsum("oc,nct->not", w[f"blocks.{i}.res.weight"][:, :, 0].astype(np.float64), h)
            res = res + w[f"blocks.{i}.res.bias"][None, :, None]
        else:
            res = h
        h = y + res
    return h[:, :, -1]


def fit_tcn_numpy(X: np.ndarray, y: np.ndarray, arch: TCNArchitecture, epochs: int, seed: int) -> tuple[dict[str, np.ndarray], None]:
    """Random causal-conv features + least-squares head (``epochs`` is unused: closed form).

    The head predicts ``y - X[:, -1]`` (the forecaster's skip term adds the last value back),
    ridge-regularised so that a head of zeros, the last-value forecast, is the fallback.
    """
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    for name, shape in arch.weight_shapes().items():
        if name.startswith("head."):
            continue
        layer = name.rsplit(".", 1)[0]
        wshape = arch.weight_shapes()[f"{layer}.weight"]
        bound = 1.0 / math.sqrt(wshape[1] * wshape[2])  # torch Conv1d default: U(-1/sqrt(fan_in), ...)
        w[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    H = _last_hidden(w, arch, X)
    A = np.hstack([H, np.ones((len(H), 1))])
    target = y - X[:, -1]
    ridge = 1e-3 * len(A) * np.eye(A.shape[1])
    coef = np.linalg.solve(A.T @ A + ridge, A.T @ target)
    w["head.weight"] = coef[None, :-1].astype(np.float32)
    w["head.bias"] = coef[-1:].astype(np.float32)
    return w, None


def _average_path_length(n: int) -> float:
    """``c(n)`` of the isolation forest paper (as scikit-learn computes it)."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + float(np.euler_gamma)) - 2.0 * (n - 1.0) / n


def fit_forest_numpy(X: np.ndarray, n_trees: int, max_samples: int | str, seed: int) -> tuple[dict[str, np.ndarray], None]:
    """Isolation trees on ``X`` in the export layout (``ocad_pipeline.models.iforest_export``).

    Per tree: ``max_samples`` rows drawn without replacement; a node splits on a random
    non-constant feature at a uniform threshold in ``[min, max)`` of its rows until one row
    is left or the depth reaches ``ceil(log2(max_samples))``; a leaf holds
    ``depth + c(rows)``. Splits are decided on float32-rounded values, as the scorer does.
    """
    rng = np.random.default_rng(seed)
    n, d = X.shape
    ms = min(256, n) if max_samples == "auto" else min(int(max_samples), n)
    max_depth = int(math.ceil(math.log2(max(ms, 2))))
    X32 = np.asarray(X, dtype=np.float32).astype(np.float64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("feature", "threshold", "left", "right", "leaf_value")}
    offsets = [0]
    for _ in range(n_trees):
        base, cap = offsets[-1], 2 * ms
        feature = np.full(cap, -1, dtype=np.int64)
        threshold = np.full(cap, np.nan)
        left = np.full(cap, -1, dtype=np.int64)
        right = np.full(cap, -1, dtype=np.int64)
        value = np.zeros(cap)
        count = 1
        stack = [(0, rng.choice(n, ms, replace=False), 0)]
        while stack:  # children get ids after their parent: they point forward, as required
            node, rows, depth = stack.pop()
            sub = X32[rows]
            lo, hi = sub.min(axis=0), sub.max(axis=0)
            usable = np.flatnonzero(hi > lo)
            if depth >= max_depth or len(rows) <= 1 or usable.size == 0:
                value[node] = depth + _average_path_length(len(rows))
                continue
            j = int(rng.choice(usable))
            thr = float(lo[j] + rng.random() * (hi[j] - lo[j]))
            if not thr < hi[j]:
                thr = float(lo[j])
            go_right = sub[:, j] > thr
            feature[node], threshold[node] = j, thr
            left[node], right[node] = base + count, base + count + 1
            stack.append((count + 1, rows[go_right], depth + 1))
            stack.append((count, rows[~go_right], depth + 1))
            count += 2
        for key, arr in (("feature", feature), ("threshold", threshold), ("left", left), ("right", right), ("leaf_value", value)):
            parts[key].append(arr[:count])
        offsets.append(base + count)
    arrays = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}
    arrays["missing_left"] = np.zeros(offsets[-1], dtype=np.uint8)
    arrays["tree_offsets"] = np.asarray(offsets, dtype=np.int64)
    arrays["n_features"] = np.asarray([d], dtype=np.int64)
    arrays["max_samples"] = np.asarray([ms], dtype=np.int64)
    arrays["normalizer"] = np.asarray([_average_path_length(ms)])
    arrays["offset"] = np.asarray([-0.5])  # scikit-learn's offset_ for contamination="auto"
    return arrays, None


def build_model_registry(
    root: str | Path,
    sim_config: SimulatorConfig = FIXTURE_SIM,
    *,
    seq_len: int = 10,
    hidden: int = 8,
    dilations: tuple[int, ...] = (1, 2),
    kernel_size: int = 3,
    epochs: int = 2,
    n_trees: int = 25,
    max_samples: int | str = 128,
    feature_config: FeatureConfig | None = None,
    threshold_quantile: float = 0.995,
    seed: int = 0,
    sim: SimulatedData | None = None,
    max_windows: int | None = 30_000,
    tcn_fitter: TCNFitter = fit_tcn_numpy,
    forest_fitter: ForestFitter = fit_forest_numpy,
) -> BuiltModels:
    """Fit and register ``tcn_udp_echo``, ``tcn_ecpri``, ``tcn_lbm`` and ``isolation_forest``
    through the artifact contract (numpy fitters unless others are passed)."""
    root = Path(root)
    reg = ModelRegistry(root)
    sim = sim if sim is not None else simulate(sim_config)
    samples = sim.samples
    caps = {str(r.endpoint_id): set(str(r.capabilities).split("+")) for r in sim.endpoints.itertuples()}
    train, test = _split(samples)
    healthy = train[~train["is_anomaly"].to_numpy()]
    reference = ReferenceStats.fit(
        healthy["endpoint_id"].to_numpy(), {s: healthy[s].to_numpy(dtype=float) for s in VALUE_SIGNALS}, np.ones(len(healthy), bool)
    )
    arch = TCNArchitecture(seq_len, hidden, tuple(dilations), kernel_size)
    versions: dict[str, str] = {}
    tcn_originals: dict[str, Any] = {}
    forest_originals: dict[str, Any] = {}

    for metric in METRIC_TYPES:
        sig = METRIC_SIGNAL[metric]
        series, eps = [], []
        for ep, g in train.groupby("endpoint_id", sort=True):
            if metric not in caps[str(ep)]:
                continue
            v = g[sig].to_numpy(dtype=float).copy()
            v[g["is_anomaly"].to_numpy()] = np.nan  # learn normal behaviour only
            series.append(v)
            eps.append(str(ep))
        allv = np.concatenate([s[np.isfinite(s)] for s in series])
        mean, std = float(allv.mean()), float(allv.std())
        X, y = healthy_windows(series, seq_len, mean, std, seed, max_windows)
        weights, tcn_originals[metric] = tcn_fitter(X, y, arch, epochs, seed)
        net = TCNArtifact(
            TCNMetadata(metric, arch, Scaler(mean, std), ResidualScale(1.0)), weights
        ).build()  # the served runtime computes the residual scale's forecasts
        # residual scale: std of target - forecast on healthy windows, in signal units
        per_ep: dict[str, float] = {}
        all_res = []
        for ep, v in zip(eps, series):
            win = np.lib.stride_tricks.sliding_window_view(v, seq_len + 1)
            win = win[np.isfinite(win).all(axis=1)]
            if len(win) < 10:
                continue
            pred = net.predict((win[:, :seq_len] - mean) / std) * std + mean
            res = win[:, seq_len] - pred
            per_ep[ep] = float(max(res.std(), 1e-6))
            all_res.append(res)
        pooled = float(np.concatenate(all_res).std())
        art = TCNArtifact(
            TCNMetadata(metric, arch, Scaler(mean, std), ResidualScale(pooled, per_ep), info={"trained_on": "tests/model_fixtures.py"}),
            weights,
        )
        versions[tcn_model_name(metric)] = art.write(reg).version

    fcfg = feature_config or FeatureConfig()
    feats = features_frame(train, reference, caps, fcfg)
    src = train.loc[feats.index]
    pos = feats.groupby("endpoint_id").cumcount().to_numpy()
    usable = (pos >= fcfg.window - 1) & ~src["is_anomaly"].to_numpy()
    forests: dict[str, dict[str, np.ndarray]] = {}
    groups: dict[str, IFGroupSpec] = {}
    key_of = {ep: "+".join(sorted(c)) for ep, c in caps.items()}
    gkeys = feats["endpoint_id"].map(key_of).to_numpy()
    for g in sorted(set(key_of.values())):
        names = model_feature_names(g.split("+"))
        sel = usable & (gkeys == g)
        X = model_matrix({n: feats.loc[sel, n].to_numpy() for n in names}, names)
        mu = X.mean(axis=0)
        sd = X.std(axis=0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        Xs = (X - mu) / sd
        forests[g], forest_originals[g] = forest_fitter(Xs, n_trees, max_samples, seed)
        thr = float(np.quantile(-NumpyIsolationForest(forests[g]).score_samples(Xs), threshold_quantile))
        groups[g] = IFGroupSpec(g, tuple(names), tuple(mu.tolist()), tuple(sd.tolist()), thr)
    art_if = IForestArtifact(IFMetadata(fcfg, groups, reference, info={"trained_on": "tests/model_fixtures.py"}), forests)
    versions[art_if.name] = art_if.write(reg).version
    return BuiltModels(root, sim, train, test, caps, reference, fcfg, versions, tcn_originals, forest_originals)


_CACHE: dict[tuple, BuiltModels] = {}


def cached_model_registry(**kwargs: Any) -> BuiltModels:
    """Build once per process and parameter set (in a temp dir removed at exit); treat the
    returned registry as read-only and :func:`copy_registry` it before changing anything."""
    key = tuple(sorted(kwargs.items()))
    if key not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="ocad-models-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE[key] = build_model_registry(root, **kwargs)
    return _CACHE[key]


def copy_registry(built: BuiltModels, dest: str | Path) -> Path:
    dest = Path(dest)
    shutil.copytree(built.root, dest)
    return dest


SAMPLE_COLUMNS = ["timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success"]


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return a == b


def assert_same_results(stream: list[Any], batch: list[Any], tol: float = 1e-12) -> None:
    """Streaming and batch results agree: everything exact except floats (within ``tol``,
    for the last-bit differences of a single-window vs a batched TCN matrix product)."""
    assert len(stream) == len(batch), (len(stream), len(batch))
    for i, (a, b) in enumerate(zip(stream, batch)):
        key_a = (a.timestamp_ms, a.endpoint_id, a.status, a.error, a.evidence)
        key_b = (b.timestamp_ms, b.endpoint_id, b.status, b.error, b.evidence)
        assert key_a == key_b, (i, key_a, key_b)
        assert _close(a.scores, b.scores, tol), (i, a.scores, b.scores)
        assert _close(a.composite, b.composite, tol), (i, a.composite, b.composite)
        assert (a.alert is None) == (b.alert is None), (i, a.alert, b.alert)
        assert a.resolved == b.resolved, (i, a.resolved, b.resolved)
        assert a.changes == b.changes, (i, a.changes, b.changes)
        if a.alert is not None:
            da, db = a.alert.to_dict(), b.alert.to_dict()
            assert _close(da, db, tol), (i, da, db)
