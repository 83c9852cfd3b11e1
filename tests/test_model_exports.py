"""The pickle-free numpy models reproduce their torch / scikit-learn originals.

Real (tiny) trained models, not hand-made weights: a TCN fitted on an AR(1) series and
Isolation Forests fitted on correlated data with outliers, in several configurations.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from sklearn.ensemble import IsolationForest

from ocad_detectors.iforest import NumpyIsolationForest
from ocad_detectors.registry import load_arrays, save_arrays
from ocad_detectors.tcn import NumpyTCN, tcn_weight_shapes
from ocad_pipeline.models.iforest_export import average_path_length, export_isolation_forest
from ocad_pipeline.models.tcn_torch import (
    TCNForecaster,
    count_parameters,
    export_tcn,
    tcn_architecture,
)


@pytest.fixture(scope="module", autouse=True)
def _single_torch_thread() -> object:
    """Tiny models train faster on one thread; restore the setting for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ----------------------------------------------------------------------------- TCN


def _ar1_windows(
    seq_len: int, n: int = 1500, phi: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    series = np.zeros(n + seq_len + 1, dtype=np.float32)
    for t in range(1, series.size):
        series[t] = phi * series[t - 1] + rng.normal(scale=0.5)
    windows = np.lib.stride_tricks.sliding_window_view(series[:-1], seq_len)[: n]
    targets = series[seq_len : seq_len + n]
    return np.ascontiguousarray(windows), targets


def _train_tcn(
    seq_len: int, epochs: int = 4, **kwargs: object
) -> tuple[TCNForecaster, float, float]:
    torch.manual_seed(0)
    model = TCNForecaster(seq_len, **kwargs)  # type: ignore[arg-type]
    x, y = (torch.from_numpy(a) for a in _ar1_windows(seq_len))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = torch.nn.MSELoss()
    with torch.no_grad():
        before = float(loss_fn(model.eval()(x), y))
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            loss = loss_fn(model(x[i : i + 128]), y[i : i + 128])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        after = float(loss_fn(model(x), y))
    return model, before, after


TCN_CONFIGS = [
    pytest.param(dict(seq_len=10), id="default-rf15>seq10"),
    pytest.param(dict(seq_len=24, hidden_channels=8, dilations=(1, 2, 4, 8), kernel_size=2), id="k2-4layers"),
    pytest.param(dict(seq_len=32, hidden_channels=16, dilations=(1, 2), kernel_size=3), id="rf7<seq32"),
    pytest.param(dict(seq_len=6, hidden_channels=1, dilations=(3,), kernel_size=4), id="hidden1-identity-res"),
]


@pytest.fixture(scope="module", params=TCN_CONFIGS)
def trained_tcn(request: pytest.FixtureRequest) -> tuple[TCNForecaster, float, float]:
    cfg = dict(request.param)
    seq_len = int(cfg.pop("seq_len"))  # type: ignore[call-overload]
    return _train_tcn(seq_len, **cfg)


def test_tcn_training_learns(trained_tcn: tuple[TCNForecaster, float, float]) -> None:
    _, before, after = trained_tcn
    assert after < before


def test_export_refuses_tensors_the_contract_does_not_know() -> None:
    """A change of the torch module the numpy runtime would not understand fails at export."""
    model = TCNForecaster(10, 4, (1, 2), 3)
    model.extra = torch.nn.Linear(4, 4)  # e.g. a new layer added to the forecaster
    with pytest.raises(ValueError, match=r"does not match the artifact contract's tensors: \['extra.bias', 'extra.weight'\]"):
        export_tcn(model)


def test_numpy_tcn_matches_torch_batch_and_single(trained_tcn: tuple[TCNForecaster, float, float]) -> None:
    model = trained_tcn[0]
    weights = export_tcn(model)
    assert all(v.dtype == np.float32 for v in weights.values())
    assert {k: v.shape for k, v in weights.items()} == tcn_weight_shapes(tcn_architecture(model))
    # through the registry's storage format, as production loads it
    net = NumpyTCN(load_arrays(save_arrays(weights)), tcn_architecture(model))

    rng = np.random.default_rng(1)
    x = rng.normal(scale=1.5, size=(1500, model.seq_len)).astype(np.float32)  # > one chunk
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
    got = net.predict(x)
    assert got.dtype == np.float64 and got.shape == (1500,)
    assert np.max(np.abs(got - ref)) <= 1e-5

    for i in range(0, 40):
        single = net.predict(x[i].astype(np.float64))
        assert single.shape == (1,)
        assert abs(single[0] - ref[i]) <= 1e-5
    assert np.array_equal(net(x[:3]), net.predict(x[:3]))
    assert net.predict(np.empty((0, model.seq_len))).shape == (0,)


@pytest.mark.parametrize(
    ("seq_len", "hidden", "dilations", "kernel"),
    [
        (10, 32, (1, 2, 4), 3),  # the default: every step's taps are one contiguous slice
        (10, 8, (1, 2, 3), 3),  # a step whose taps are not adjacent slabs (gathered)
        (6, 4, (1, 2, 4, 8), 2),  # receptive field beyond the window
        (30, 6, (2, 3), 5),  # the whole receptive field inside the window
        (12, 1, (1, 2), 3),  # one channel: identity residual in the first block
    ],
)
def test_numpy_tcn_matches_torch_for_other_architectures(seq_len: int, hidden: int, dilations: tuple[int, ...], kernel: int) -> None:
    """The backward plan and its slab layout hold for any dilations and kernel, not only the
    default ones (tuning may pick others)."""
    torch.manual_seed(seq_len + hidden)
    model = TCNForecaster(seq_len, hidden_channels=hidden, dilations=dilations, kernel_size=kernel).eval()
    for p in model.parameters():  # larger weights than the init, so every path matters
        p.data.mul_(3.0)
    net = NumpyTCN(export_tcn(model), tcn_architecture(model))
    x = np.random.default_rng(2).normal(size=(1700, seq_len)).astype(np.float32)  # > two chunks
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
    got = net.predict(x)
    assert np.max(np.abs(got - ref)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    single = np.array([net.predict(x[i].astype(np.float64))[0] for i in range(50)])
    assert np.allclose(single, got[:50], rtol=0, atol=1e-12)


def test_numpy_tcn_batch_is_thread_safe() -> None:
    """Batch mode reuses scratch buffers; they must be per thread."""
    torch.manual_seed(0)
    model = TCNForecaster(10, hidden_channels=8).eval()
    net = NumpyTCN(export_tcn(model), tcn_architecture(model))
    xs = [np.random.default_rng(s).normal(size=(530 + 37 * s, 10)) for s in range(4)]
    expected = [net.predict(x) for x in xs]
    errors: list[int] = []

    def work(i: int) -> None:
        for _ in range(5):
            if not np.array_equal(net.predict(xs[i]), expected[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_tcn_is_causal() -> None:
    torch.manual_seed(3)
    model = TCNForecaster(20, hidden_channels=8, dilations=(1, 2, 4), kernel_size=3).eval()
    assert model.receptive_field == 15
    x = torch.randn(4, 20)
    with torch.no_grad():
        h = x.unsqueeze(1)
        for block in model.blocks:
            h = block(h)
        base_seq, base_out = h, model(x)
        for t in range(19):
            # changing the future (steps > t) must not change any hidden state at steps <= t
            x2 = x.clone()
            x2[:, t + 1 :] += torch.randn(4, 19 - t) * 5
            h2 = x2.unsqueeze(1)
            for block in model.blocks:
                h2 = block(h2)
            assert torch.equal(h2[:, :, : t + 1], base_seq[:, :, : t + 1])
        # inputs older than the receptive field do not matter; the newest one does
        old = x.clone()
        old[:, : 20 - 15] = 1e3
        assert torch.equal(model(old), base_out)
        new = x.clone()
        new[:, -1] += 1.0
        assert not torch.allclose(model(new), base_out)


def test_tcn_helpers_and_validation() -> None:
    model = TCNForecaster(10, hidden_channels=4, dilations=(1, 2), kernel_size=3)
    assert tcn_architecture(model) == {
        "seq_len": 10, "hidden_channels": 4, "dilations": [1, 2], "kernel_size": 3
    }
    expected = (4 * 1 * 3 + 4) + (4 + 4) + (4 * 4 * 3 + 4) + (4 + 1)
    assert count_parameters(model) == expected
    assert sum(int(np.prod(s)) for s in tcn_weight_shapes(tcn_architecture(model)).values()) == expected
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 9))

    weights = export_tcn(model)
    arch = tcn_architecture(model)
    bad = dict(weights)
    bad["blocks.1.conv.weight"] = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"blocks\.1\.conv\.weight.*\(4, 4, 3\).*\(4, 4, 2\)"):
        NumpyTCN(bad, arch)
    missing = {k: v for k, v in weights.items() if k != "head.bias"}
    with pytest.raises(ValueError, match="head.bias"):
        NumpyTCN(missing, arch)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        NumpyTCN({**weights, "extra": np.zeros(1, np.float32)}, arch)
    nan = dict(weights)
    nan["head.weight"] = np.full((1, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        NumpyTCN(nan, arch)
    with pytest.raises(ValueError, match="architecture"):
        NumpyTCN(weights, {"seq_len": 10})
    net = NumpyTCN(weights, arch)
    with pytest.raises(ValueError, match=r"\(batch, 10\)"):
        net.predict(np.zeros((3, 11)))
    with pytest.raises(ValueError, match=r"\(batch, 10\)"):
        net.predict(np.zeros(9))


# ----------------------------------------------------------------------------- Isolation Forest


def _if_data(d: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cov = rng.normal(size=(d, d))
    X = rng.normal(size=(n, d)) @ cov * rng.uniform(0.1, 100, size=d) + rng.uniform(-50, 50, size=d)
    X[: n // 20] += rng.normal(scale=30, size=(n // 20, d))  # outliers
    return X


IF_CONFIGS = [
    pytest.param(50, "auto", 1.0, 5, id="50-auto-all-d5"),
    pytest.param(100, 128, 0.6, 10, id="100-128-0.6-d10"),
    pytest.param(200, "auto", 0.6, 20, id="200-auto-0.6-d20"),
    pytest.param(80, 300, 1.0, 12, id="80-300-all-d12"),
    pytest.param(60, 0.3, 0.5, 7, id="60-float-0.5-d7"),
]


@pytest.mark.parametrize(("n_estimators", "max_samples", "max_features", "d"), IF_CONFIGS)
def test_numpy_iforest_matches_sklearn(
    n_estimators: int, max_samples: int | float | str, max_features: float, d: int
) -> None:
    X = _if_data(d, 1500, seed=d)
    model = IsolationForest(
        n_estimators=n_estimators, max_samples=max_samples, max_features=max_features, random_state=7
    ).fit(X)
    arrays = export_isolation_forest(model)
    forest = NumpyIsolationForest(load_arrays(save_arrays(arrays)))
    assert forest.n_trees == n_estimators and forest.n_features == d
    assert forest.max_samples == model.max_samples_

    X_test = np.vstack([_if_data(d, 2000, seed=100 + d), X[:200]])
    ref = model.score_samples(X_test)
    got = forest.score_samples(X_test)
    assert got.shape == ref.shape and got.dtype == np.float64
    assert np.max(np.abs(got - ref)) <= 1e-9
    for i in range(0, 2200, 97):
        single = forest.score_samples(X_test[i])
        assert single.shape == (1,)
        assert abs(single[0] - ref[i]) <= 1e-9
    np.testing.assert_allclose(
        forest.decision_function(X_test), model.decision_function(X_test), rtol=0, atol=1e-9
    )


def test_iforest_float32_threshold_edges_and_nan() -> None:
    """Values exactly at thresholds: decisions only match if X is rounded to float32 first."""
    X = _if_data(6, 1000, seed=1)
    model = IsolationForest(n_estimators=100, max_features=0.7, random_state=0).fit(X)
    arrays = export_isolation_forest(model)
    forest = NumpyIsolationForest(arrays)
    split = np.flatnonzero(arrays["feature"] >= 0)
    rng = np.random.default_rng(2)
    picks = rng.choice(split, size=800)
    X_edge = np.tile(np.median(X, axis=0), (800, 1))
    thr = arrays["threshold"][picks]
    X_edge[np.arange(800), arrays["feature"][picks]] = thr
    # the test has teeth: for many of these, float64 says "left" but float32 rounding says "right"
    assert np.sum(thr.astype(np.float32).astype(np.float64) > thr) > 100
    ref = model.score_samples(X_edge)
    assert np.max(np.abs(forest.score_samples(X_edge) - ref)) <= 1e-9
    for i in range(0, 800, 40):
        assert abs(forest.score_samples(X_edge[i])[0] - ref[i]) <= 1e-9

    X_nan = _if_data(6, 500, seed=3)
    X_nan[rng.random(X_nan.shape) < 0.15] = np.nan
    ref = model.score_samples(X_nan)
    assert np.max(np.abs(forest.score_samples(X_nan) - ref)) <= 1e-9
    for i in range(0, 500, 25):
        assert abs(forest.score_samples(X_nan[i])[0] - ref[i]) <= 1e-9


def test_iforest_export_layout() -> None:
    X = _if_data(8, 600, seed=4)
    model = IsolationForest(n_estimators=20, max_features=0.5, random_state=1).fit(X)
    a = export_isolation_forest(model)
    n_nodes = sum(e.tree_.node_count for e in model.estimators_)
    assert a["feature"].shape == (n_nodes,) and a["tree_offsets"][-1] == n_nodes
    assert a["feature"].dtype == np.int64 and a["threshold"].dtype == np.float64
    leaves = a["left"] < 0
    assert np.all(a["feature"][leaves] == -1) and np.all(a["right"][leaves] == -1)
    # with max_features=0.5 each tree sees 4 of 8 columns; the export uses global columns
    for t, feats in enumerate(model.estimators_features_):
        lo, hi = a["tree_offsets"][t], a["tree_offsets"][t + 1]
        used = set(a["feature"][lo:hi][a["feature"][lo:hi] >= 0].tolist())
        assert used <= set(feats.tolist())
    assert set(a["feature"][~leaves].tolist()) - set(range(4))  # not just local indices
    # leaf values equal sklearn's own per-node path lengths
    for t in range(len(model.estimators_)):
        lo, hi = a["tree_offsets"][t], a["tree_offsets"][t + 1]
        sk = model._decision_path_lengths[t] + model._average_path_length_per_tree[t] - 1.0
        tree_leaves = leaves[lo:hi]
        assert np.array_equal(a["leaf_value"][lo:hi][tree_leaves], sk[tree_leaves])
    assert a["normalizer"][0] == average_path_length(np.array([256]))[0]
    assert a["max_samples"][0] == 256 and a["n_features"][0] == 8


def test_iforest_validation() -> None:
    model = IsolationForest(n_estimators=5, random_state=0).fit(_if_data(4, 300, seed=5))
    a = export_isolation_forest(model)
    forest = NumpyIsolationForest(a)
    with pytest.raises(ValueError, match="missing 'leaf_value'"):
        NumpyIsolationForest({k: v for k, v in a.items() if k != "leaf_value"})
    bad = dict(a, left=a["left"].copy())
    bad["left"][0] = 0  # a cycle
    with pytest.raises(ValueError, match="children must point forward"):
        NumpyIsolationForest(bad)
    bad = dict(a, feature=a["feature"].copy())
    bad["feature"][0] = 9
    with pytest.raises(ValueError, match="split columns"):
        NumpyIsolationForest(bad)
    with pytest.raises(ValueError, match="tree_offsets"):
        NumpyIsolationForest(dict(a, tree_offsets=a["tree_offsets"][:-1]))
    with pytest.raises(ValueError, match="threshold"):
        NumpyIsolationForest(dict(a, threshold=a["threshold"][:-1]))
    with pytest.raises(ValueError, match=r"\(n_samples, 4\)"):
        forest.score_samples(np.zeros((2, 5)))
    assert forest.score_samples(np.zeros((0, 4))).shape == (0,)


def test_inference_modules_import_no_training_frameworks() -> None:
    code = (
        "import sys\n"
        "import ocad_detectors.tcn, ocad_detectors.iforest, ocad_detectors.registry, "
        "ocad_detectors.registry_cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'sklearn', 'dagster', 'pandas', 'joblib'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("perfect", [True, False])
def test_numpy_iforest_both_layouts_match_sklearn_exactly(perfect: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The level-ordered ('perfect') layout and the compact fallback for deep forests agree
    bit for bit with sklearn, on clean and NaN input."""
    import ocad_detectors.iforest as mod

    if not perfect:
        monkeypatch.setattr(mod, "_PERFECT_MIN_SLOTS", 0)
        monkeypatch.setattr(mod, "_PERFECT_NODE_RATIO", 0)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 7))
    forest = IsolationForest(n_estimators=60, max_samples=512, random_state=0).fit(X)
    np_forest = NumpyIsolationForest(export_isolation_forest(forest))
    assert np_forest._perfect is perfect
    Xt = rng.normal(size=(500, 7)) * 2
    np.testing.assert_array_equal(np_forest.score_samples(Xt), forest.score_samples(Xt))
    Xn = Xt.copy()
    Xn[rng.random(Xn.shape) < 0.1] = np.nan
    np.testing.assert_array_equal(np_forest.score_samples(Xn), forest.score_samples(Xn))
    np.testing.assert_array_equal(np_forest.score_samples(Xt[0]), forest.score_samples(Xt[:1]))
