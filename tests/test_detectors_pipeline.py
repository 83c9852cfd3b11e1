"""The combined engine with real (tiny) models: batch == streaming, bad input, missing or
corrupt models, unknown endpoints, hot reload."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_fixtures import SAMPLE_COLUMNS, assert_same_results, cached_model_registry, copy_registry

from ocad_detectors.config import ChangePointConfig, DetectionConfig, ReloadConfig
from ocad_detectors.modelset import ModelLoader
from ocad_detectors.pipeline import STATUSES, DetectionPipeline
from ocad_detectors.registry import ModelRegistry, load_arrays, save_arrays
from ocad_detectors.samples import SAMPLE_FIELDS, Sample, iter_samples

NAN = float("nan")


@pytest.fixture(scope="module")
def built():
    return cached_model_registry()


@pytest.fixture(scope="module")
def models(built):
    return ModelLoader(built.root, built.root).load()


def _stream_frame(built) -> pd.DataFrame:
    """The held-out part of the simulation plus every kind of bad input, in arrival order."""
    f = built.test[SAMPLE_COLUMNS].copy()
    f = f.astype({c: object for c in SAMPLE_COLUMNS[2:]})
    rows = f.to_dict("records")
    extra_at = {
        500: {"timestamp_ms": rows[499]["timestamp_ms"], "endpoint_id": rows[499]["endpoint_id"], "udp_echo_rtt_ms": 99.0},  # duplicate
        900: {**rows[100], "udp_echo_rtt_ms": 3.0},  # out of order
        1200: {**rows[1199], "ecpri_ow_us": "fast"},  # string
        1300: {**rows[1299], "lbm_rtt_ms": -2.0},  # negative
        1400: {**rows[1399], "udp_echo_rtt_ms": float("inf")},  # inf
        1500: {**rows[1499], "udp_echo_rtt_ms": 5e9},  # absurd
        1600: {**rows[1599], "endpoint_id": None},  # missing field
        1700: {**rows[1699], "timestamp_ms": None},
    }
    out = []
    for i, r in enumerate(rows):
        if i in extra_at:
            out.append({c: extra_at[i].get(c) for c in SAMPLE_COLUMNS})
        out.append(r)
    # an endpoint nobody trained on, with a few losses
    t0 = rows[-1]["timestamp_ms"]
    rng = np.random.default_rng(3)
    for k in range(60):
        out.append({"timestamp_ms": t0 + 5000 * (k + 1), "endpoint_id": "o-ru-999", "udp_echo_rtt_ms": None if 30 <= k < 36 else 4 + rng.random(),
                    "ecpri_ow_us": 120 + rng.random(), "lbm_rtt_ms": None, "lbm_success": None})
    # another newcomer whose delay steps up for 90 min: a lasting shift (change records, evidence)
    for k in range(2700):
        up = 720 <= k < 1800
        out.append({"timestamp_ms": t0 + 5000 * (k + 1), "endpoint_id": "o-du-998", "udp_echo_rtt_ms": (9.0 if up else 5.0) + rng.random(),
                    "ecpri_ow_us": None, "lbm_rtt_ms": 6 + rng.random(), "lbm_success": True})
    frame = pd.DataFrame(out, columns=SAMPLE_COLUMNS)
    return frame.astype({"timestamp_ms": object, "endpoint_id": object})


@pytest.fixture(scope="module")
def stream_frame(built):
    return _stream_frame(built)


def test_batch_gives_exactly_the_streaming_results(built, stream_frame):
    stream = DetectionPipeline(model_dir=built.root)
    results = [stream.process(s) for s in iter_samples(stream_frame)]
    batch = DetectionPipeline(model_dir=built.root).score_frame(stream_frame)
    assert_same_results(results, batch.results())
    # every sample got one result, and the stream exercised every path
    assert len(results) == len(stream_frame)
    status = pd.Series([r.status for r in results]).value_counts().to_dict()
    assert status["invalid"] == 6 and status["duplicate"] == 1 and status["out_of_order"] == 1
    evidence = {e for r in results for e in r.evidence}
    assert evidence == {"threshold", "loss", "changepoint", "residual", "multivariate"}
    alerts = [r.alert for r in results if r.alert]
    assert alerts and all(a.explanation for a in alerts)
    assert {a.severity for a in alerts} >= {"major", "critical"}
    assert all(0.0 <= r.composite <= 1.0 and all(0.0 <= v <= 1.0 for v in r.scores.values()) for r in results)
    # the unknown endpoint: pooled statistics, capabilities from what it answers, loss counted
    unknown = [r for r in results if r.endpoint_id == "o-ru-999"]
    assert stream.endpoints["o-ru-999"] == frozenset({"udp_echo", "ecpri"})
    assert any("loss" in r.evidence for r in unknown)
    # scores frame: one row per sample
    df = batch.to_frame()
    assert len(df) == len(stream_frame) and df["alert"].sum() == len(alerts)


def test_invalid_results_name_the_field(built, stream_frame):
    pipe = DetectionPipeline(model_dir=built.root)
    errs = [r.error for r in map(pipe.process, iter_samples(stream_frame)) if r.status == "invalid"]
    assert any("ecpri_ow_us: expected a number in us, got str 'fast'" in e for e in errs)
    assert any(e.startswith("endpoint_id: missing") for e in errs)
    assert any(e.startswith("timestamp_ms: missing") for e in errs)


def test_models_loaded_from_the_registry_and_verified(built, tmp_path, caplog):
    pipe = DetectionPipeline(model_dir=built.root)
    assert pipe.model_versions == {"tcn_udp_echo": "1.0.0", "tcn_ecpri": "1.0.0", "tcn_lbm": "1.0.0", "isolation_forest": "1.0.0"}
    root = copy_registry(built, tmp_path / "reg")
    forest = root / "isolation_forest" / "1.0.0" / "forest.safetensors"
    data = bytearray(forest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    forest.write_bytes(bytes(data))
    import shutil

    shutil.rmtree(root / "tcn_lbm")
    with caplog.at_level(logging.WARNING, logger="ocad_detectors"):
        pipe = DetectionPipeline(model_dir=root)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        assert any("isolation_forest" in w and "sha256 mismatch" in w for w in warnings)
        assert any("tcn_lbm" in w and "not found" in w for w in warnings)
        assert pipe.model_versions["isolation_forest"] is None and pipe.model_versions["tcn_lbm"] is None
        frame = _stream_frame(built)
        results = [pipe.process(s) for s in iter_samples(frame)]
        pipe.reload()
        n_warn = len([r for r in caplog.records if r.levelno == logging.WARNING])
        results += [pipe.process(s) for s in iter_samples(frame.head(50))]
        # reported once, not per sample or per reload (the level detector learns each endpoint's
        # level itself, so a missing reference is no warning any more)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == n_warn == 2
    assert all(r.scores["multivariate"] == 0.0 for r in results)
    evidence = {e for r in results for e in r.evidence}
    assert {"threshold", "loss", "changepoint", "residual"} <= evidence and "multivariate" not in evidence
    assert any(r.alert for r in results)
    # and batch still equals streaming with the reduced model set
    batch = DetectionPipeline(model_dir=root).score_frame(frame)
    assert_same_results(results[: len(frame)], batch.results())


def test_no_models_at_all_rules_and_configured_cusum_keep_working(built, tmp_path, caplog):
    ref = [r for r in built.reference.to_records()]
    cfg = DetectionConfig(changepoint=ChangePointConfig(reference=tuple(ref)))
    with caplog.at_level(logging.WARNING, logger="ocad_detectors"):
        pipe = DetectionPipeline(cfg, model_dir=tmp_path / "empty")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4
    assert set(pipe.model_versions.values()) == {None}
    frame = _stream_frame(built)
    results = [pipe.process(s) for s in iter_samples(frame)]
    evidence = {e for r in results for e in r.evidence}
    assert evidence == {"threshold", "loss", "changepoint"}
    # the newcomer's 90 min step is a shift from its confirmation until the new level has held an
    # hour (rebaseline_s: then it is the baseline), nowhere else
    step = np.array([r.endpoint_id == "o-du-998" for r in results])
    cp = np.array(["changepoint" in r.evidence for r in results])
    k = np.flatnonzero(step)
    assert cp[k[720 + 400 : 1440 - 3]].all() and not cp[k[:720]].any() and not cp[k[1440 + 3 :]].any()
    assert cp[k[720 : 720 + 60]].any()  # the short-horizon CUSUM: within minutes, before the 32 min confirmation
    # elsewhere mostly on the fixture's incidents
    anomalous = set(zip(built.test["endpoint_id"].astype(str), built.test["timestamp_ms"].astype("int64"))) & set(
        zip(built.test.loc[built.test["is_anomaly"], "endpoint_id"].astype(str), built.test.loc[built.test["is_anomaly"], "timestamp_ms"].astype("int64")))
    lab = np.array([(r.endpoint_id, r.timestamp_ms) in anomalous for r in results])
    assert cp[~step & lab].mean() > 0.2 and cp[~step & ~lab].mean() < 0.03
    changes = [c for r in results for c in r.changes if c.endpoint_id == "o-du-998"]
    assert [(c.signal, c.direction) for c in changes] == [("udp_echo_rtt_ms", "up"), ("udp_echo_rtt_ms", "down")]


def test_configured_capabilities_and_unsupported_signals(models):
    cfg = DetectionConfig(endpoints={"cfg-1": "lbm"})
    pipe = DetectionPipeline(cfg, models=models)
    t = 1_767_225_600_000
    # udp 100 ms on an endpoint configured as lbm-only: ignored, not a threshold violation
    r = pipe.process(Sample(t, "cfg-1", udp_echo_rtt_ms=100.0, lbm_rtt_ms=5.0, lbm_success=True))
    assert r.status == "ok" and r.evidence == ()
    # transport-002 answers loopback only (known from training): its eCPRI value is ignored
    assert pipe._known["transport-002"] == frozenset({"lbm"})
    r = pipe.process(Sample(t, "transport-002", ecpri_ow_us=5000.0, lbm_rtt_ms=5.0, lbm_success=True))
    assert r.evidence == ()
    # an lbm-only endpoint losing its loopback replies alerts on its own
    rs = [pipe.process(Sample(t + 5000 * (i + 1), "cfg-1", lbm_success=False)) for i in range(4)]
    assert [r.evidence for r in rs] == [(), (), ("loss",), ("loss",)]  # from the 3rd lost reply
    assert rs[2].alert is not None and rs[2].alert.explanation[0].signal == "lbm_success"
    assert rs[3].alert is None  # same episode


def test_out_of_order_and_duplicates_do_not_touch_state(models):
    pipe = DetectionPipeline(models=models)
    t = 1_767_225_600_000
    for i in range(30):
        pipe.process(Sample(t + 5000 * i, "o-du-001", 3.0, 100.0, 5.0, True))
    e = pipe._endpoints["o-du-001"]
    before = (list(e.res.buf["udp_echo"]), e.cp.lv[0].to_dict(), e.last_ts)
    r1 = pipe.process(Sample(t + 5000 * 29, "o-du-001", 90.0, 100.0, 5.0, True))
    r2 = pipe.process(Sample(t, "o-du-001", 90.0, 100.0, 5.0, True))
    assert (r1.status, r2.status) == ("duplicate", "out_of_order")
    assert "equals the newest accepted" in r1.error and "is older than" in r2.error
    assert r1.composite == 0.0 and r1.alert is None
    assert (list(e.res.buf["udp_echo"]), e.cp.lv[0].to_dict(), e.last_ts) == before


def test_idle_endpoints_are_evicted_on_request_and_start_afresh(models):
    """A service whose fleet changes drops endpoints that went quiet (sample time); nothing is
    evicted implicitly, and a returning endpoint warms up again like a new one."""
    pipe = DetectionPipeline(models=models)
    fresh = DetectionPipeline(models=models)
    t = 1_767_225_600_000
    for i in range(40):
        pipe.process(Sample(t + 5000 * i, "o-du-001", 3.0 + 0.01 * i, 100.0, 5.0, True))
        pipe.process(Sample(t + 5000 * i, "o-ru-001", 4.0, 110.0, None, None))
    # o-du-001 goes quiet for an hour while o-ru-001 keeps reporting
    for i in range(40, 760):
        pipe.process(Sample(t + 5000 * i, "o-ru-001", 4.0, 110.0, None, None))
    assert pipe.last_seen == {"o-du-001": t + 5000 * 39, "o-ru-001": t + 5000 * 759}
    assert set(pipe.endpoints) == {"o-du-001", "o-ru-001"}  # never evicted implicitly

    assert pipe.evict_idle(t + 5000 * 759 - 30 * 60_000) == ["o-du-001"]
    assert set(pipe.endpoints) == {"o-ru-001"}
    assert pipe.evict_idle(t) == []  # nothing older than that
    with pytest.raises(TypeError, match="before_ts_ms"):
        pipe.evict_idle("yesterday")

    # the returning endpoint scores exactly like one never seen before
    back = [Sample(t + 5000 * (800 + i), "o-du-001", 3.0 + 0.02 * i, 100.0, 5.0, True) for i in range(20)]
    assert [pipe.process(x) for x in back] == [fresh.process(x) for x in back]
    assert pipe.forget("o-du-001") is True and pipe.forget("o-du-001") is False
    assert set(pipe.endpoints) == {"o-ru-001"}


def _new_tcn_version(root, name: str, bias_shift: float) -> str:
    reg = ModelRegistry(root)
    cur = reg.load_version(name)
    w = load_arrays(cur.files["weights.safetensors"])
    w["head.bias"] = w["head.bias"] + np.float32(bias_shift)
    meta = {k: v for k, v in cur.metadata.items() if k not in ("model_name", "version", "created_at", "files")}
    info = reg.write_version(name, {"weights.safetensors": save_arrays(w)}, meta)
    return info.version


def test_hot_reload_on_a_sample_boundary_keeps_state_and_samples(built, tmp_path):
    root = copy_registry(built, tmp_path / "reg")
    cfg = DetectionConfig(reload=ReloadConfig(check_every_samples=7))
    live = DetectionPipeline(cfg, model_dir=root)
    still = DetectionPipeline(cfg, model_dir=built.root)  # never sees the new version
    samples = list(iter_samples(built.test[SAMPLE_COLUMNS].head(1200)))
    out_live, out_still = [], []
    for s in samples[:600]:
        out_live.append(live.process(s))
        out_still.append(still.process(s))
    new = _new_tcn_version(root, "tcn_udp_echo", 0.5)
    ModelRegistry(root).promote("tcn_udp_echo", new, reason="test")
    assert live.model_versions["tcn_udp_echo"] == "1.0.0"  # not before a check
    switched_at = None
    for i, s in enumerate(samples[600:]):
        out_live.append(live.process(s))
        out_still.append(still.process(s))
        if switched_at is None and live.model_versions["tcn_udp_echo"] == new:
            switched_at = i
    assert switched_at is not None and switched_at < 7
    assert len(out_live) == len(samples)  # no sample lost
    assert [r.scores for r in out_live[:600]] == [r.scores for r in out_still[:600]]
    # right after the switch the residual detector scores at once: buffers were kept
    after = out_live[600 + switched_at + 1 :]
    e = live._endpoints["o-du-001"]
    assert len(e.res.buf["udp_echo"]) == live.residual.models["udp_echo"].seq_len
    udp_eps = [ep for ep, caps in built.capabilities.items() if "udp_echo" in caps]
    assert any(r.endpoint_id in udp_eps and r.status == "ok" for r in after)
    # the new forecaster is in use: its UDP echo forecasts differ from the old one's
    assert all(live._endpoints[ep].res.pred[0] != still._endpoints[ep].res.pred[0] for ep in udp_eps if ep in live._endpoints)
    # explicit reload() after a rollback
    ModelRegistry(root).rollback("tcn_udp_echo", reason="test")
    assert live.reload()["tcn_udp_echo"] == "1.0.0"
    # a promoted version that turns out corrupt keeps the one in service
    new2 = _new_tcn_version(root, "tcn_ecpri", 0.1)
    ModelRegistry(root).promote("tcn_ecpri", new2)
    (root / "tcn_ecpri" / new2 / "weights.safetensors").write_bytes(b"garbage")
    assert live.reload()["tcn_ecpri"] == "1.0.0"


# ----------------------------------------------------------------------------- property test

ENDPOINTS = ["o-ru-001", "o-du-001", "transport-001", "transport-002", "stranger"]


@st.composite
def sample_streams(draw):
    n = draw(st.integers(1, 90))
    t = 1_767_225_600_000
    out = []

    def value(lo, hi):
        r = draw(st.integers(0, 99))
        if r < 80:
            return draw(st.floats(lo, hi))
        if r < 87:
            return None
        if r < 92:
            return NAN
        return draw(st.sampled_from([math.inf, -math.inf, -1.0, 1e12, "5.0", True, 0.0, np.float32(3.0), np.int64(7)]))

    for _ in range(n):
        t += draw(st.sampled_from([5000] * 12 + [0, -5000, -60_000, 1]))
        ts = t if draw(st.integers(0, 39)) else draw(st.sampled_from([None, "soon", -1, 1.5, float(t), np.int64(t)]))
        ep = draw(st.sampled_from(["o-du-001"] * 4 + ENDPOINTS)) if draw(st.integers(0, 39)) else draw(st.sampled_from(["", None, 42]))
        succ = draw(st.sampled_from([True] * 10 + [False, None, NAN, 0.5, "no", 1, np.bool_(False)]))
        out.append(Sample(ts, ep, value(1.0, 40.0), value(40.0, 600.0), value(1.0, 40.0), succ))
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sample_streams())
def test_random_streams_never_crash_and_batch_equals_streaming(models, samples):
    pipe = DetectionPipeline(models=models)
    results = [pipe.process(s) for s in samples]
    assert len(results) == len(samples)
    for r in results:
        assert r.status in STATUSES and r.status != "error", r
        assert 0.0 <= r.composite <= 1.0 and all(0.0 <= v <= 1.0 for v in r.scores.values())
        assert (r.status == "ok") == (r.error is None)
        if r.status != "ok":
            assert r.alert is None and r.evidence == ()
    frame = pd.DataFrame({f: pd.Series([getattr(s, f) for s in samples], dtype=object) for f in SAMPLE_FIELDS})
    batch = DetectionPipeline(models=models).score_frame(frame)
    assert_same_results(results, batch.results())


def test_a_model_that_appears_later_scores_at_once(built, tmp_path):
    import shutil

    root = copy_registry(built, tmp_path / "reg")
    shutil.rmtree(root / "tcn_udp_echo")
    pipe = DetectionPipeline(DetectionConfig(reload=ReloadConfig(check_every_samples=3)), model_dir=root)
    assert pipe.model_versions["tcn_udp_echo"] is None
    samples = [s for s in iter_samples(built.test[SAMPLE_COLUMNS]) if s.endpoint_id == "o-du-001"][:200]
    for s in samples[:150]:
        pipe.process(s)
    shutil.copytree(built.root / "tcn_udp_echo", root / "tcn_udp_echo")  # registered and production
    st = pipe._endpoints["o-du-001"].res
    for s in samples[150:]:
        r = pipe.process(s)
        if pipe.model_versions["tcn_udp_echo"] is not None:
            break
    # the sample at the switch already has a forecast: the buffer survived, no warm-up
    assert pipe.model_versions["tcn_udp_echo"] == "1.0.0"
    assert len(st.buf["udp_echo"]) == pipe.residual.models["udp_echo"].seq_len
    assert not math.isnan(st.r[0]) and r.scores["residual"] > 0


def test_empty_frame_and_schema_errors(models):
    pipe = DetectionPipeline(models=models)
    empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in SAMPLE_COLUMNS})
    res = pipe.score_frame(empty)
    assert len(res) == 0 and res.alerts == [] and len(res.to_frame()) == 0
    with pytest.raises(ValueError, match="lacks column"):
        pipe.score_frame(pd.DataFrame({"endpoint_id": ["a"], "udp_echo_rtt_ms": [1.0]}))
    with pytest.raises(ValueError, match="no signal column"):
        pipe.score_frame(pd.DataFrame({"timestamp_ms": [1], "endpoint_id": ["a"]}))


def test_reload_from_another_thread_swaps_between_samples(built, tmp_path):
    import threading

    root = copy_registry(built, tmp_path / "reg")
    pipe = DetectionPipeline(DetectionConfig(reload=ReloadConfig(check_every_samples=0)), model_dir=root)
    samples = list(iter_samples(built.test[SAMPLE_COLUMNS].head(1500)))
    new = _new_tcn_version(root, "tcn_lbm", 0.2)
    done = threading.Event()
    reloaded = threading.Event()

    def reloader():
        ModelRegistry(root).promote("tcn_lbm", new)
        while not done.is_set():
            pipe.reload()
            reloaded.set()

    th = threading.Thread(target=reloader)
    th.start()
    try:
        results = [pipe.process(s) for s in samples]
        assert reloaded.wait(60)
    finally:
        done.set()
        th.join()
    assert len(results) == len(samples) and all(r.status == "ok" for r in results)
    assert pipe.model_versions["tcn_lbm"] == new
