"""Migration comparison: online training inside ``detect`` (before) vs inference only (after).

Both modes replay the *same* samples one by one, each in its *own fresh Python process*, so
that the process memory of a mode is what that mode needs (the inference-only process never
imports torch, scikit-learn or pandas):

* ``online_training`` (before the separation, seed 1.1): :class:`ocad_pipeline.online_baseline.
  OnlineTrainingPipeline` = rules + CUSUM + a TCN and an Isolation Forest that keep history and
  retrain inside ``detect`` every ``retrain_every`` samples (TCN ``tcn_epochs`` epochs, forest
  ``if_trees`` trees);
* ``inference_only`` (after): :class:`ocad_detectors.pipeline.DetectionPipeline` with the
  registry's production models.

The full detector sets are compared; rules and CUSUM are the same code with the same
configuration and reference statistics in both, so the differences come from the model-based
detectors, whose own scores are reported as well (``per_detector``).

Per mode and split the worker records every call's wall time (``time.perf_counter_ns`` around
``process``, including the training stalls), the four detector scores, the composite, the
alert-worthy flag and whether the call trained a model, plus RSS after import, after loading
and at the end, and the peak RSS (``getrusage``); results come back as ``.npz`` + ``.json``.

F1: a mode's composite threshold maximizes point-wise F1 on a replay of the *validation*
split (same endpoints, same number of samples, fresh process); it is then applied to the test
replay (point-wise and event-wise, :mod:`ocad_pipeline.evaluation`). The built-in decision
(alert-worthy evidence, no tuning) is reported too.

This module's top level imports only the standard library and numpy: it is also the worker
(``python -m ocad_pipeline.mode_comparison --worker spec.json``), and the inference-only worker
must stay free of heavy imports.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "INFERENCE",
    "MODES",
    "ONLINE",
    "SEED_CLAIMS",
    "ComparisonResult",
    "ComparisonSettings",
    "ModeRun",
    "compare_modes",
    "latency_figure",
    "report_markdown",
    "resolve_versions",
    "run_mode",
    "select_streams",
]

INFERENCE = "inference_only"
ONLINE = "online_training"
MODES = (ONLINE, INFERENCE)
DETECTOR_ORDER = ("rule", "changepoint", "residual", "multivariate")
#: seed section 8.2, "expected effects" of the separation
SEED_CLAIMS = {"latency_change": -0.50, "memory_change": -0.70}
HEAVY_MODULES = ("torch", "sklearn", "pandas", "scipy", "dagster")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ComparisonSettings:
    """What to replay and how the old detectors train."""

    n_endpoints: int = 3
    samples_per_endpoint: int = 1500
    #: explicit endpoints (else chosen: most anomalous samples in the replayed part, one per
    #: capability group first)
    endpoints: list[str] | None = None
    retrain_every: int = 50
    tcn_epochs: int = 20
    if_trees: int = 100
    history: int = 1000
    seed: int = 0
    #: a call slower than this is a stall
    stall_ms: float = 10.0
    #: torch threads of the online-training worker (BLAS/OpenMP: 1 thread in both workers)
    torch_threads: int = 1
    #: model versions of the inference-only mode: ``production``, ``latest`` (the newest
    #: registered, i.e. what a training run just wrote) or ``auto`` (production where one
    #: exists, else the newest)
    model_versions: str = "auto"
    timeout_s: float = 1800.0


@dataclass
class ModeRun:
    """One worker's results: per-sample arrays (stream order) and its ``info`` (memory, timings)."""

    mode: str
    split: str
    latency_ns: np.ndarray
    scores: np.ndarray  # (n, 4) in DETECTOR_ORDER
    composite: np.ndarray
    worthy: np.ndarray  # alert-worthy evidence at this sample
    trained: np.ndarray  # the call trained a model
    ok: np.ndarray  # status == "ok"
    info: dict[str, Any]


@dataclass
class ComparisonResult:
    report: dict[str, Any]
    runs: dict[str, dict[str, ModeRun]] = field(default_factory=dict)  # mode -> split -> run
    test_stream: Any = None
    val_stream: Any = None


# ----------------------------------------------------------------------------- worker side


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _peak_rss_mib() -> float:
    """Peak RSS of this process. Linux: ``VmHWM`` (high-water mark of this process image);
    ``ru_maxrss`` is not used there because Linux carries it over from the forking parent across
    ``exec``, so a worker started from a big process would report the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


def _worker(spec_path: str) -> int:
    """Replay one stream in this (fresh) process; write ``<out>.npz`` and ``<out>.json``."""
    rss_start = _rss_mib()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    mode = spec["mode"]
    data = np.load(spec["stream"], allow_pickle=False)
    ts, eps = data["timestamp_ms"], data["endpoint_id"]
    u, c, lb, succ = data["udp_echo_rtt_ms"], data["ecpri_ow_us"], data["lbm_rtt_ms"], data["lbm_success"]
    t0 = time.perf_counter()
    from ocad_detectors._util import evidence_mask
    from ocad_detectors.alerts import AlertManager
    from ocad_detectors.config import DetectionConfig
    from ocad_detectors.samples import Sample

    if mode == ONLINE:
        import torch

        torch.set_num_threads(int(spec["torch_threads"]))
        from ocad_pipeline.online_baseline import OnlineTrainingPipeline
    elif mode == INFERENCE:
        from ocad_detectors.pipeline import DetectionPipeline
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    import_s = time.perf_counter() - t0
    rss_import = _rss_mib()

    t0 = time.perf_counter()
    cfg = DetectionConfig.from_dict(spec["detection"])
    if mode == ONLINE:
        o = spec["online"]
        det: Any = OnlineTrainingPipeline(
            cfg, retrain_every=o["retrain_every"], tcn_epochs=o["tcn_epochs"], if_trees=o["if_trees"],
            history=o["history"], seed=o["seed"],
        )
    else:
        from ocad_detectors.modelset import ModelLoader

        root = Path(spec["model_dir"])
        det = DetectionPipeline(cfg, models=ModelLoader(root, root, pinned=spec["versions"]).load())
    load_s = time.perf_counter() - t0
    rss_load = _rss_mib()
    worthy_of = AlertManager(cfg.alerts).worthy

    def opt(v: float) -> float | None:
        return None if v != v else float(v)

    n = len(ts)
    samples = [
        Sample(int(ts[i]), str(eps[i]), opt(u[i]), opt(c[i]), opt(lb[i]), None if succ[i] != succ[i] else bool(succ[i]))
        for i in range(n)
    ]
    lat = np.zeros(n, dtype=np.int64)
    scores = np.zeros((n, len(DETECTOR_ORDER)))
    comp = np.zeros(n)
    worthy = np.zeros(n, dtype=bool)
    trained = np.zeros(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    clock = time.perf_counter_ns
    process = det.process
    t_run = time.perf_counter()
    for i, s in enumerate(samples):
        a = clock()
        r = process(s)
        lat[i] = clock() - a
        sc = r.scores
        scores[i] = (sc["rule"], sc["changepoint"], sc["residual"], sc["multivariate"])
        comp[i] = r.composite
        worthy[i] = worthy_of(evidence_mask(r.evidence))
        ok[i] = r.status == "ok"
        if mode == ONLINE:
            trained[i] = r.trained
    run_s = time.perf_counter() - t_run
    info = {
        "mode": mode,
        "split": spec["split"],
        "samples": n,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "import_seconds": import_s,
        "load_seconds": load_s,
        "replay_seconds": run_s,
        "rss_start_mib": rss_start,
        "rss_after_import_mib": rss_import,
        "rss_after_load_mib": rss_load,
        "rss_end_mib": _rss_mib(),
        "peak_rss_mib": _peak_rss_mib(),
        "heavy_modules_loaded": [m for m in HEAVY_MODULES if m in sys.modules],
    }
    if mode == ONLINE:
        info["fits"] = det.fits
        info["fit_seconds"] = det.fit_seconds
        info["torch_threads"] = int(torch.get_num_threads())
    else:
        info["model_versions"] = det.model_versions
    out = Path(spec["out"])
    np.savez(out.with_suffix(".npz"), latency_ns=lat, scores=scores, composite=comp, worthy=worthy, trained=trained, ok=ok)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------- parent side


def _stream_arrays(stream: pd.DataFrame) -> dict[str, np.ndarray]:
    succ = stream["lbm_success"]
    return {
        "timestamp_ms": stream["timestamp_ms"].to_numpy(np.int64),
        "endpoint_id": stream["endpoint_id"].astype(str).to_numpy().astype("U"),
        "udp_echo_rtt_ms": stream["udp_echo_rtt_ms"].to_numpy(np.float64, na_value=np.nan),
        "ecpri_ow_us": stream["ecpri_ow_us"].to_numpy(np.float64, na_value=np.nan),
        "lbm_rtt_ms": stream["lbm_rtt_ms"].to_numpy(np.float64, na_value=np.nan),
        "lbm_success": succ.astype("Float64").to_numpy(np.float64, na_value=np.nan),
    }


def run_mode(
    mode: str,
    split: str,
    stream: pd.DataFrame,
    workdir: Path,
    *,
    detection: dict[str, Any],
    model_dir: str | os.PathLike[str] | None,
    settings: ComparisonSettings,
    versions: dict[str, str] | None = None,
) -> ModeRun:
    """Replay ``stream`` (wide samples in arrival order) through ``mode`` in a fresh process."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stream_path = workdir / f"{mode}_{split}.stream.npz"
    np.savez(stream_path, **_stream_arrays(stream))
    out = workdir / f"{mode}_{split}"
    spec = {
        "mode": mode,
        "split": split,
        "stream": str(stream_path),
        "out": str(out),
        "model_dir": None if model_dir is None else str(model_dir),
        "versions": versions or {},
        "detection": detection,
        "torch_threads": settings.torch_threads,
        "online": {
            "retrain_every": settings.retrain_every,
            "tcn_epochs": settings.tcn_epochs,
            "if_trees": settings.if_trees,
            "history": settings.history,
            "seed": settings.seed,
        },
    }
    spec_path = workdir / f"{mode}_{split}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, **ONE_THREAD}
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-m", "ocad_pipeline.mode_comparison", "--worker", str(spec_path)],
        cwd=str(_ROOT), env=env, capture_output=True, text=True, timeout=settings.timeout_s,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"{mode} worker ({split}) failed with exit code {proc.returncode}:\n{tail}")
    arr = np.load(out.with_suffix(".npz"), allow_pickle=False)
    info = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    return ModeRun(mode, split, arr["latency_ns"], arr["scores"], arr["composite"], arr["worthy"], arr["trained"], arr["ok"], info)


def resolve_versions(model_dir: str | os.PathLike[str], which: str = "auto") -> dict[str, str]:
    """Model name -> version to serve: ``production``, ``latest`` or ``auto`` (production, else latest)."""
    from ocad_detectors.artifacts import MODEL_NAMES
    from ocad_detectors.registry import ModelRegistry, parse_version

    if which not in ("production", "latest", "auto"):
        raise ValueError(f"model_versions must be production, latest or auto, got {which!r}")
    reg = ModelRegistry(model_dir)
    out: dict[str, str] = {}
    for name in MODEL_NAMES:
        try:
            prod = reg.production_version(name)
            listed = [v.version for v in reg.list_versions(name)]
        except Exception:  # noqa: BLE001 - a model never trained is simply absent
            prod, listed = None, []
        latest = max(listed, key=parse_version) if listed else None
        v = {"production": prod, "latest": latest, "auto": prod or latest}[which]
        if v:
            out[name] = v
    return out


def select_streams(
    splits: dict[str, pd.DataFrame],
    endpoints: pd.DataFrame,
    settings: ComparisonSettings,
    incidents: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(test stream, validation stream, endpoints): the first ``samples_per_endpoint`` samples of
    each chosen endpoint in the test and the val split, interleaved by timestamp (arrival order).

    Without ``settings.endpoints`` the choice is greedy and deterministic: most incidents in the
    replayed part of the test split first, then an endpoint of a capability group not chosen
    yet, then most anomalous samples, then the name. The same endpoints feed both modes.
    """
    test, val = splits["test"], splits["val"]
    n = settings.samples_per_endpoint
    in_test, in_val = set(test["endpoint_id"].astype(str)), set(val["endpoint_id"].astype(str))
    if settings.endpoints:
        chosen = [str(e) for e in settings.endpoints]
        unknown = [e for e in chosen if e not in in_test or e not in in_val]
        if unknown:
            raise ValueError(f"endpoints {unknown} are not in both the val and the test split")
    else:
        common = sorted(in_test & in_val)
        if not common:
            raise ValueError("no endpoint is in both the val and the test split")
        group = {str(r.endpoint_id): str(r.capabilities) for r in endpoints.itertuples()}
        head = test.assign(endpoint_id=test["endpoint_id"].astype(str)).sort_values(["endpoint_id", "timestamp_ms"])
        head = head.groupby("endpoint_id", sort=False).head(n)
        anomalous = head.groupby("endpoint_id")["is_anomaly"].sum()
        n_inc: dict[str, int] = {}
        if incidents is not None and len(incidents):
            span = head.groupby("endpoint_id")["timestamp_ms"].agg(["min", "max"])
            inc = incidents.assign(endpoint_id=incidents["endpoint_id"].astype(str))
            inc = inc[inc["endpoint_id"].isin(span.index)]
            lo = span["min"].reindex(inc["endpoint_id"]).to_numpy()
            hi = span["max"].reindex(inc["endpoint_id"]).to_numpy()
            n_inc = inc[(inc["end"].to_numpy() > lo) & (inc["start"].to_numpy() <= hi)].groupby("endpoint_id").size().to_dict()
        chosen, seen = [], set()
        rest = list(common)
        while rest and len(chosen) < settings.n_endpoints:
            best = min(rest, key=lambda e: (-n_inc.get(e, 0), group.get(e) in seen, -int(anomalous.get(e, 0)), e))
            chosen.append(best)
            seen.add(group.get(best))
            rest.remove(best)

    def take(df: pd.DataFrame) -> pd.DataFrame:
        sel = df[df["endpoint_id"].astype(str).isin(chosen)].sort_values(["endpoint_id", "timestamp_ms"])
        sel = sel.groupby("endpoint_id", sort=False).head(n)
        return sel.sort_values(["timestamp_ms", "endpoint_id"], kind="stable").reset_index(drop=True)

    return take(test), take(val), chosen


def _latency_summary(run: ModeRun, stall_ms: float) -> dict[str, Any]:
    ms = run.latency_ns / 1e6
    stalls = ms > stall_ms
    q = np.percentile(ms, [50, 95, 99])
    out = {
        "p50_ms": float(q[0]),
        "p95_ms": float(q[1]),
        "p99_ms": float(q[2]),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "total_s": float(ms.sum() / 1000.0),
        "stalls": int(stalls.sum()),
        "stall_threshold_ms": stall_ms,
        "stall_share": float(stalls.mean()),
        "training_calls": int(run.trained.sum()),
        "stalls_on_training_calls": int((stalls & run.trained).sum()),
    }
    if run.trained.any() and (~run.trained).any():
        rest = ms[~run.trained]
        out["p95_ms_without_training_calls"] = float(np.percentile(rest, 95))
        out["mean_ms_training_calls"] = float(ms[run.trained].mean())
    return out


def _detection_figures(run_val: ModeRun, run_test: ModeRun, val: pd.DataFrame, test: pd.DataFrame, incidents: pd.DataFrame) -> dict[str, Any]:
    from ocad_pipeline.evaluation import best_f1_threshold, eventwise, pointwise

    yv = val["is_anomaly"].to_numpy(bool)
    yt = test["is_anomaly"].to_numpy(bool)
    stream = test[["endpoint_id", "timestamp_ms"]]

    # incidents that overlap the replayed part of their endpoint
    span = test.groupby(test["endpoint_id"].astype(str))["timestamp_ms"].agg(["min", "max"])
    inc = incidents[incidents["endpoint_id"].astype(str).isin(span.index)]
    lo = span["min"].reindex(inc["endpoint_id"].astype(str)).to_numpy()
    hi = span["max"].reindex(inc["endpoint_id"].astype(str)).to_numpy()
    inc = inc[(inc["end"].to_numpy() > lo) & (inc["start"].to_numpy() <= hi)]

    def both(flags: np.ndarray, scores: np.ndarray | None) -> dict[str, Any]:
        pw = pointwise(yt, flags, scores)
        if len(inc):
            ev = eventwise(stream, flags, inc).metrics
        else:  # nothing to detect in this stream: event-wise figures are undefined
            ev = {"incidents": 0, "detected": 0, "predicted_events": None, "precision": None, "recall": None,
                  "f1_score": None, "mttd_seconds": None}
        return {
            "pointwise": {k: pw[k] for k in ("precision", "recall", "f1_score", "false_alarm_rate", "roc_auc")},
            "eventwise": {k: ev[k] for k in ("incidents", "detected", "predicted_events", "precision", "recall", "f1_score", "mttd_seconds")},
        }

    thr, val_f1 = best_f1_threshold(yv, run_val.composite)
    out = {"composite": {"threshold": thr, "val_f1": val_f1, **both(run_test.composite > thr, run_test.composite)}}
    out["builtin_decision"] = both(run_test.worthy, None)
    per = {}
    for j, d in enumerate(DETECTOR_ORDER):
        if d not in ("residual", "multivariate"):
            continue
        t, f = best_f1_threshold(yv, run_val.scores[:, j])
        s = run_test.scores[:, j]
        per[d] = {"threshold": t, "val_f1": f, **both(s > t, s)}
    out["per_detector"] = per
    return out


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or not old or not (math.isfinite(new) and math.isfinite(old)):
        return None
    return float(new / old)


def compare_modes(
    splits: dict[str, pd.DataFrame],
    incidents: pd.DataFrame,
    endpoints: pd.DataFrame,
    model_dir: str | os.PathLike[str],
    settings: ComparisonSettings | None = None,
    *,
    workdir: str | os.PathLike[str] | None = None,
    log: Any = None,
) -> ComparisonResult:
    """Replay val and test streams through both modes (4 fresh processes) and compare."""
    from ocad_detectors.modelset import ModelLoader

    settings = settings or ComparisonSettings()
    log = log or (lambda msg: None)
    test, val, chosen = select_streams(splits, endpoints, settings, incidents)
    caps = {str(r.endpoint_id): str(r.capabilities) for r in endpoints.itertuples() if str(r.endpoint_id) in chosen}
    versions = resolve_versions(model_dir, settings.model_versions)
    models = ModelLoader(Path(model_dir), Path(model_dir), pinned=versions).load()
    if not models.tcn or models.iforest is None:
        raise FileNotFoundError(
            f"no {settings.model_versions} TCN / Isolation Forest versions under {model_dir} (have: {models.versions}); "
            "materialize tcn_models and isolation_forest_model first"
        )
    reference = models.reference().to_records()
    detection = {
        INFERENCE: {"endpoints": caps},
        # the old detectors had no trained models: CUSUM gets the same reference statistics here
        ONLINE: {"endpoints": caps, "changepoint": {"reference": reference}},
    }
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ocad-modes-")
        workdir = tmp.name
    runs: dict[str, dict[str, ModeRun]] = {m: {} for m in MODES}
    try:
        for split, stream in (("val", val), ("test", test)):
            for mode in MODES:
                t0 = time.perf_counter()
                r = run_mode(
                    mode, split, stream, Path(workdir), detection=detection[mode], model_dir=model_dir, settings=settings,
                    versions=versions,
                )
                runs[mode][split] = r
                log(
                    f"{mode} {split}: {len(stream)} samples in {time.perf_counter() - t0:.1f} s "
                    f"(replay {r.info['replay_seconds']:.1f} s, peak RSS {r.info['peak_rss_mib']:.0f} MiB)"
                )
    finally:
        if tmp is not None:
            tmp.cleanup()

    modes: dict[str, Any] = {}
    for mode in MODES:
        rt = runs[mode]["test"]
        i = rt.info
        modes[mode] = {
            "detection": _detection_figures(runs[mode]["val"], rt, val, test, incidents),
            "latency": _latency_summary(rt, settings.stall_ms),
            "memory": {k: i[k] for k in ("peak_rss_mib", "rss_after_load_mib", "rss_after_import_mib", "rss_start_mib", "rss_end_mib")},
            "startup": {"import_seconds": i["import_seconds"], "load_seconds": i["load_seconds"]},
            "heavy_modules_loaded": i["heavy_modules_loaded"],
            "status_not_ok": int((~rt.ok).sum()),
        }
        if mode == ONLINE:
            modes[mode]["training"] = {"fits": i["fits"], "fit_seconds": i["fit_seconds"], "torch_threads": i["torch_threads"]}
        else:
            modes[mode]["model_versions"] = i["model_versions"]
    new, old = modes[INFERENCE], modes[ONLINE]
    test_incidents = new["detection"]["composite"]["eventwise"]["incidents"]
    ratios = {}
    for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"):
        ratios[f"latency_{k}"] = _ratio(new["latency"][k], old["latency"][k])
    for k in ("peak_rss_mib", "rss_after_load_mib"):
        ratios[f"memory_{k}"] = _ratio(new["memory"][k], old["memory"][k])
    growth_new = new["memory"]["peak_rss_mib"] - new["memory"]["rss_after_load_mib"]
    growth_old = old["memory"]["peak_rss_mib"] - old["memory"]["rss_after_load_mib"]
    report = {
        "description": (
            "online_training = rules + CUSUM + TCN and Isolation Forest retrained inside detect (seed 1.1); "
            "inference_only = DetectionPipeline with the registry's production models. Same samples, one by one, "
            "each mode and split in its own fresh process. F1 thresholds chosen on the val replay only."
        ),
        "settings": asdict(settings),
        "stream": {
            "endpoints": chosen,
            "capabilities": caps,
            "test_samples": len(test),
            "val_samples": len(val),
            "test_anomalous_share": float(test["is_anomaly"].mean()) if len(test) else 0.0,
            "test_anomalous_samples": int(test["is_anomaly"].sum()),
            "test_incidents": int(test_incidents),
            "test_start_ms": int(test["timestamp_ms"].min()) if len(test) else None,
            "test_end_ms": int(test["timestamp_ms"].max()) if len(test) else None,
        },
        "modes": modes,
        "ratios_new_over_old": ratios,
        "memory_growth_during_replay_mib": {INFERENCE: growth_new, ONLINE: growth_old},
        "seed_claims": SEED_CLAIMS,
    }
    return ComparisonResult(report, runs, test, val)


# ----------------------------------------------------------------------------- presentation


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _pct(r: float | None) -> str:
    return "–" if r is None else f"{(r - 1.0) * 100:+.0f} %"


def report_markdown(report: dict[str, Any]) -> str:
    """The comparison as a markdown table (old, new, new/old, change, seed claim)."""
    o, n = report["modes"][ONLINE], report["modes"][INFERENCE]
    lat_claim = f"{SEED_CLAIMS['latency_change'] * 100:+.0f} %"
    mem_claim = f"{SEED_CLAIMS['memory_change'] * 100:+.0f} %"
    rows = [
        "| figure | online training (before) | inference only (after) | after/before | change | seed claim (8.2) |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, a: Any, b: Any, claim: str = "", nd: int = 3, ratio: bool = True) -> None:
        r = _ratio(b, a) if ratio and isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        rows.append(f"| {name} | {_f(a, nd)} | {_f(b, nd)} | {_f(r, 3) if r is not None else '–'} | {_pct(r)} | {claim} |")

    od, nd_ = o["detection"], n["detection"]
    row("point-wise F1 (composite, val threshold)", od["composite"]["pointwise"]["f1_score"], nd_["composite"]["pointwise"]["f1_score"])
    row("point-wise precision / recall", None, None, ratio=False)
    rows[-1] = (
        f"| point-wise precision / recall | {_f(od['composite']['pointwise']['precision'])} / {_f(od['composite']['pointwise']['recall'])} | "
        f"{_f(nd_['composite']['pointwise']['precision'])} / {_f(nd_['composite']['pointwise']['recall'])} | – | – |  |"
    )
    row("event-wise F1 (composite, val threshold)", od["composite"]["eventwise"]["f1_score"], nd_["composite"]["eventwise"]["f1_score"])
    row("point-wise F1, built-in decision (no tuning)", od["builtin_decision"]["pointwise"]["f1_score"], nd_["builtin_decision"]["pointwise"]["f1_score"])
    row("event-wise F1, built-in decision", od["builtin_decision"]["eventwise"]["f1_score"], nd_["builtin_decision"]["eventwise"]["f1_score"])
    for d in ("residual", "multivariate"):
        row(f"point-wise F1, {d} detector alone", od["per_detector"][d]["pointwise"]["f1_score"], nd_["per_detector"][d]["pointwise"]["f1_score"])
    for k, label in (("p50_ms", "P50"), ("p95_ms", "P95"), ("p99_ms", "P99"), ("max_ms", "worst case"), ("mean_ms", "mean")):
        row(f"latency {label} per sample (ms)", o["latency"][k], n["latency"][k], lat_claim, nd=3)
    row(f"stalls > {_f(o['latency']['stall_threshold_ms'], 0)} ms (calls)", o["latency"]["stalls"], n["latency"]["stalls"], ratio=False)
    row("calls that trained a model", o["latency"]["training_calls"], n["latency"]["training_calls"], ratio=False)
    row("peak RSS (MiB)", o["memory"]["peak_rss_mib"], n["memory"]["peak_rss_mib"], mem_claim, nd=1)
    row("RSS after import + load (MiB)", o["memory"]["rss_after_load_mib"], n["memory"]["rss_after_load_mib"], mem_claim, nd=1)
    g = report["memory_growth_during_replay_mib"]
    row("RSS growth during replay (MiB)", g[ONLINE], g[INFERENCE], nd=1, ratio=False)
    row("import + load (s)", o["startup"]["import_seconds"] + o["startup"]["load_seconds"], n["startup"]["import_seconds"] + n["startup"]["load_seconds"], nd=2)
    s = report["stream"]
    eps = ", ".join(f"{e} [{s['capabilities'].get(e, '?')}]" for e in s["endpoints"])
    head = (
        f"Same test stream for both modes: {s['test_samples']} samples of {len(s['endpoints'])} endpoints "
        f"({eps}), {s['test_anomalous_samples']} anomalous ({s['test_anomalous_share']:.1%}) in "
        f"{s['test_incidents']} incidents (event-wise figures rest on these few); thresholds from a "
        f"{s['val_samples']}-sample val replay. "
        f"Old mode: retrain every {report['settings']['retrain_every']} samples, TCN {report['settings']['tcn_epochs']} epochs, "
        f"Isolation Forest {report['settings']['if_trees']} trees; {o.get('training', {}).get('fits', {})} fits. "
        f"Heavy modules loaded: before {o['heavy_modules_loaded']}, after {n['heavy_modules_loaded']}.\n\n"
    )
    return head + "\n".join(rows)


def latency_figure(result: ComparisonResult):
    """Per-sample latency over the test replay for both modes (log y), training calls marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.8))
    colors = {ONLINE: "tab:red", INFERENCE: "tab:blue"}
    labels = {ONLINE: "online training (before)", INFERENCE: "inference only (after)"}
    for mode in MODES:
        r = result.runs[mode]["test"]
        ms = r.latency_ns / 1e6
        ax.plot(np.arange(len(ms)), ms, lw=0.5, color=colors[mode], alpha=0.8, label=labels[mode])
        if r.trained.any():
            idx = np.flatnonzero(r.trained)
            ax.scatter(idx, ms[idx], s=6, color="black", zorder=3, label="call that retrained a model")
    stall = result.report["settings"]["stall_ms"]
    ax.axhline(stall, color="grey", ls="--", lw=0.8, label=f"stall threshold {stall:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("sample (arrival order)")
    ax.set_ylabel("latency per sample (ms)")
    ax.set_title("per-sample detection latency, same test stream", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The numeric headline figures (for MLflow / asset metadata), nested by mode."""
    out: dict[str, Any] = {}
    for mode, m in report["modes"].items():
        out[mode] = {
            "f1_pointwise": m["detection"]["composite"]["pointwise"]["f1_score"],
            "f1_eventwise": m["detection"]["composite"]["eventwise"]["f1_score"],
            "f1_builtin_pointwise": m["detection"]["builtin_decision"]["pointwise"]["f1_score"],
            "latency": {k: m["latency"][k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "stalls")},
            "memory": {k: m["memory"][k] for k in ("peak_rss_mib", "rss_after_load_mib")},
        }
    out["ratio"] = report["ratios_new_over_old"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--worker":
        return _worker(args[1])
    print("usage: python -m ocad_pipeline.mode_comparison --worker SPEC.json  (internal; use the mode_comparison asset)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
