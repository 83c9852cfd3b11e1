"""Build a real (tiny) model registry for detector tests and the benchmark.

The artifacts follow the training pipeline's contract exactly: a torch TCN per metric trained
for a few epochs on healthy simulator data and exported with ``export_tcn``; an sklearn
Isolation Forest per capability group fitted on ``features_frame`` output and exported with
``export_isolation_forest``; reference statistics, scalers, residual scales and thresholds in
the metadata. Everything is seeded, so two builds give the same models.

Import it from tests as ``from model_fixtures import build_model_registry`` (pytest puts the
tests directory on ``sys.path``).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocad_detectors.features import FeatureConfig, ReferenceStats, features_frame, model_feature_names, model_matrix
from ocad_detectors.registry import ModelRegistry, save_arrays
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, VALUE_SIGNALS
from ocad_pipeline.simulator import SimulatedData, SimulatorConfig, simulate

#: fleet used by default: every capability group of the simulator, 12 h, all incident types.
#: Pinned to the clean profile: the tests built on it assert which detectors fire on the
#: clean simulator's large incidents (to be re-pointed once the detectors hold on "realistic").
FIXTURE_SIM = SimulatorConfig(
    n_oru=4, n_odu=1, n_transport=2, duration_hours=12.0, incidents_per_endpoint_day=20.0, seed=11, profile="clean"
)


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
    #: the fitted originals (torch TCNForecaster per metric, sklearn IsolationForest per group)
    torch_models: dict[str, Any]
    forests: dict[str, Any]


def _split(samples: pd.DataFrame, frac: float = 0.7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rank = samples.groupby("endpoint_id").cumcount()
    size = samples.groupby("endpoint_id")["timestamp_ms"].transform("size")
    first = rank < (size * frac).astype(int)
    return samples[first].reset_index(drop=True), samples[~first].reset_index(drop=True)


def train_tcn(
    series: list[np.ndarray], seq_len: int, hidden: int, dilations: tuple[int, ...], kernel_size: int, epochs: int, seed: int,
    max_windows: int | None = None,
) -> tuple[Any, float, float]:
    """Fit a TCNForecaster on NaN-free, scaled windows of several healthy series."""
    import torch

    from ocad_pipeline.models.tcn_torch import TCNForecaster

    torch.manual_seed(seed)
    allv = np.concatenate([s[np.isfinite(s)] for s in series])
    mean, std = float(allv.mean()), float(allv.std())
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
    x = torch.tensor(xa, dtype=torch.float32)
    y = torch.tensor(ya, dtype=torch.float32)
    model = TCNForecaster(seq_len, hidden, dilations, kernel_size, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 256):
            b = perm[i : i + 256]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[b]), y[b])
            loss.backward()
            opt.step()
    model.eval()
    return model, mean, std


def _predict(model: Any, windows: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(windows, dtype=torch.float32)).numpy().astype(np.float64)


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
) -> BuiltModels:
    """Train and register ``tcn_udp_echo``, ``tcn_ecpri``, ``tcn_lbm`` and ``isolation_forest``."""
    import torch
    from sklearn.ensemble import IsolationForest

    from ocad_pipeline.models.iforest_export import export_isolation_forest
    from ocad_pipeline.models.tcn_torch import export_tcn, tcn_architecture

    torch.set_num_threads(1)
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
    versions: dict[str, str] = {}
    torch_models: dict[str, Any] = {}
    forests: dict[str, Any] = {}

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
        model, mean, std = train_tcn(series, seq_len, hidden, dilations, kernel_size, epochs, seed, max_windows)
        torch_models[metric] = model
        # residual scale: std of target - forecast on healthy windows, in signal units
        per_ep: dict[str, float] = {}
        all_res = []
        for ep, v in zip(eps, series):
            win = np.lib.stride_tricks.sliding_window_view(v, seq_len + 1)
            win = win[np.isfinite(win).all(axis=1)]
            if len(win) < 10:
                continue
            pred = _predict(model, (win[:, :seq_len] - mean) / std) * std + mean
            res = win[:, seq_len] - pred
            per_ep[ep] = float(max(res.std(), 1e-6))
            all_res.append(res)
        pooled = float(np.concatenate(all_res).std())
        meta = {
            "kind": "tcn",
            "metric_type": metric,
            "signal": sig,
            "architecture": tcn_architecture(model),
            "scaler": {"mean": mean, "std": std},
            "residual_scale": {"pooled": pooled, "per_endpoint": per_ep},
            "trained_on": "tests/model_fixtures.py",
        }
        info = reg.write_version(f"tcn_{metric}", {"weights.safetensors": save_arrays(export_tcn(model))}, meta)
        versions[f"tcn_{metric}"] = info.version

    fcfg = feature_config or FeatureConfig()
    feats = features_frame(train, reference, caps, fcfg)
    src = train.loc[feats.index]
    pos = feats.groupby("endpoint_id").cumcount().to_numpy()
    usable = (pos >= fcfg.window - 1) & ~src["is_anomaly"].to_numpy()
    arrays: dict[str, np.ndarray] = {}
    groups: dict[str, Any] = {}
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
        forest = IsolationForest(n_estimators=n_trees, max_samples=max_samples, random_state=seed).fit(Xs)
        forests[g] = forest
        thr = float(np.quantile(-forest.score_samples(Xs), threshold_quantile))
        for k, a in export_isolation_forest(forest).items():
            arrays[f"{g}/{k}"] = a
        groups[g] = {"features": names, "scaler": {"mean": mu.tolist(), "std": sd.tolist()}, "threshold": thr}
    meta = {
        "kind": "isolation_forest",
        "feature_config": fcfg.to_dict(),
        "groups": groups,
        "reference_stats": reference.to_records(),
        "trained_on": "tests/model_fixtures.py",
    }
    info = reg.write_version("isolation_forest", {"forest.safetensors": save_arrays(arrays)}, meta)
    versions["isolation_forest"] = info.version
    return BuiltModels(root, sim, train, test, caps, reference, fcfg, versions, torch_models, forests)


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
