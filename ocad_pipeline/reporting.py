"""Evaluate a set of model versions through the thin detector package; gate candidates.

Every candidate is measured on the same held-back streams as production: the validation split
picks thresholds, the test split is scored once with them. Detection is reported per detector
and for the fused composite, point-wise and event-wise (see :mod:`ocad_pipeline.evaluation`);
the system's alerts give MTTD and lead time; a fresh subprocess running
``ocad_detectors.probe`` gives latency and memory as a service would see them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocad_detectors.artifacts import MODEL_NAMES, TCNMetadata, parse_metadata, tcn_metric
from ocad_detectors.config import DETECTORS
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.registry import ModelRegistry, parse_version
from ocad_pipeline.evaluation import best_f1_threshold, episode_flags, eventwise, pointwise

SAMPLE_COLUMNS = ["timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success"]
SCORES = (*DETECTORS, "composite")


@dataclass(frozen=True)
class GateTargets:
    """The seed's targets (6.1.2, 6.1.3) and how much worse than production a candidate may be."""

    precision: float = 0.90
    recall: float = 0.85
    f1: float = 0.87
    false_alarm_rate: float = 0.06
    roc_auc: float = 0.92
    mttd_seconds: float = 20.0
    #: alert episodes touching no incident, per endpoint and day of test data (the pager's view)
    false_alerts_per_endpoint_day: float = 1.0
    #: share of test incidents with at least one alert inside them
    incident_recall: float = 0.95
    lead_time_minutes: float = 4.0
    latency_p95_ms: float = 100.0
    model_size_mb: float = 10.0
    memory_mb: float = 100.0
    f1_tolerance: float = 0.01
    far_tolerance: float = 0.005
    mttd_tolerance_s: float = 5.0
    lead_time_tolerance_min: float = 0.5


def latest_versions(reg: ModelRegistry) -> dict[str, str]:
    """Newest registered version of each model (the candidates a training run just wrote)."""
    out = {}
    for name in MODEL_NAMES:
        try:
            vs = [v.version for v in reg.list_versions(name)]
        except Exception:  # noqa: BLE001 - a model never trained is simply absent
            continue
        if vs:
            out[name] = max(vs, key=parse_version)
    return out


def production_versions(reg: ModelRegistry) -> dict[str, str]:
    out = {}
    for name in MODEL_NAMES:
        try:
            v = reg.production_version(name)
        except Exception:  # noqa: BLE001
            v = None
        if v:
            out[name] = v
    return out


def score_stream(root: Path, versions: Mapping[str, str], frame: pd.DataFrame) -> pd.DataFrame:
    """Batch-score a recorded stream with exactly these versions; rows keep the frame's order."""
    pipe = DetectionPipeline(model_dir=root, versions=dict(versions))
    missing = [n for n in versions if pipe.model_versions.get(n) != versions[n]]
    if missing:
        raise RuntimeError(f"could not load {[(n, versions[n]) for n in missing]} from {root} (see warnings above)")
    res = pipe.score_frame(frame[SAMPLE_COLUMNS].reset_index(drop=True)).to_frame()
    res["is_anomaly"] = frame["is_anomaly"].to_numpy()
    return res


def _detection(val: pd.DataFrame, test: pd.DataFrame, incidents: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SCORES:
        col = "composite" if name == "composite" else f"score_{name}"
        thr, val_f1 = best_f1_threshold(val["is_anomaly"].to_numpy(), val[col].to_numpy())
        s = test[col].to_numpy()
        flagged = s > thr
        out[name] = {
            "threshold": thr,
            "threshold_source": "max point-wise F1 on the validation split",
            "val_f1": val_f1,
            "pointwise": pointwise(test["is_anomaly"].to_numpy(), flagged, s),
            "eventwise": eventwise(test, flagged, incidents).metrics,
        }
    alerts = eventwise(test, episode_flags(test), incidents)
    out["alerts"] = {
        "eventwise": alerts.metrics,
        "alerts": int(test["alert"].sum()),
        "episodes": int(alerts.metrics["predicted_events"]),
        "basis": "one predicted event per alert episode (first alert to resolution)",
    }
    return out, alerts.per_incident


def probe(root: Path, versions: Mapping[str, str], frame: pd.DataFrame, n: int = 3000) -> dict[str, Any]:
    """Latency and memory of the thin package in a fresh process, streaming ``n`` samples."""
    ep = frame["endpoint_id"].value_counts().index[0]
    sub = frame[frame["endpoint_id"] == ep].sort_values("timestamp_ms").iloc[:n]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.npz"
        arrays = {"timestamp_ms": sub["timestamp_ms"].to_numpy(np.int64), "endpoint_id": sub["endpoint_id"].astype(str).to_numpy().astype("U")}
        for c in ("udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms"):
            arrays[c] = sub[c].to_numpy(dtype=float, na_value=np.nan)
        arrays["lbm_success"] = sub["lbm_success"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        np.savez(path, **arrays)
        out = subprocess.run(
            [sys.executable, "-m", "ocad_detectors.probe", str(root), str(path), json.dumps(dict(versions))],
            capture_output=True, text=True, timeout=600, env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
    if out.returncode != 0:
        raise RuntimeError(f"inference probe failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["endpoint_id"] = str(ep)
    return res


def model_sizes(reg: ModelRegistry, versions: Mapping[str, str]) -> dict[str, float]:
    """Bytes of model files per version (metadata.json included), in MB."""
    out = {}
    for name, v in versions.items():
        d = reg.version_dir(name, v)
        out[name] = sum(p.stat().st_size for p in d.iterdir() if p.is_file()) / 1e6
    return out


def evaluate_versions(
    root: Path,
    versions: Mapping[str, str],
    val: pd.DataFrame,
    test: pd.DataFrame,
    incidents: pd.DataFrame,
    labelled: bool = True,
    probe_samples: int = 3000,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The seed-shaped report (6.2) for one set of versions; also the scored test stream and
    the per-incident table."""
    reg = ModelRegistry(root)
    meta = {n: reg.get_metadata(n, v) for n, v in versions.items()}
    test_scored = score_stream(root, versions, test)
    per_incident = pd.DataFrame()
    if labelled:
        val_scored = score_stream(root, versions, val)
        detection, per_incident = _detection(val_scored, test_scored, incidents)
        comp = detection["composite"]
        alerts = detection["alerts"]["eventwise"]
        headline = {
            "false_alerts_per_endpoint_day": alerts["false_alarms_per_endpoint_day"],
            "incident_recall": alerts["recall"],
            "precision": alerts["precision"],
            "recall": alerts["recall"],
            "f1_score": alerts["f1_score"],
            "false_alarm_rate": comp["pointwise"]["false_alarm_rate"],
            "roc_auc": comp["pointwise"]["roc_auc"],
            "basis": "false alerts per endpoint-day, incident recall, precision/recall/F1: event-wise over the "
            "system's alert episodes (an incident counts once, an episode once); "
            "false_alarm_rate and roc_auc: point-wise on the fused composite at the validation-chosen threshold",
        }
        ops_detect = {
            "mttd_seconds": alerts["mttd_seconds"],
            "mttd_median_seconds": alerts["mttd_median_seconds"],
            "lead_time_minutes": alerts["lead_time_p50_minutes"],
        }
    else:
        detection = {"available": False}
        headline = {"available": False, "reason": "the data has no labels: detection metrics are not available"}
        ops_detect = {"mttd_seconds": None, "mttd_median_seconds": None, "lead_time_minutes": None}
    pr = probe(root, versions, test, probe_samples)
    sizes = model_sizes(reg, versions)
    typed = {n: parse_metadata(n, m) for n, m in meta.items()}
    tcn = {n: t for n, t in typed.items() if isinstance(t, TCNMetadata)}
    forecast = {tcn_metric(n): (t.info.get("validation_metrics") or {}).get("test_forecast") for n, t in tcn.items()}
    params = sum(int(m.get("parameter_count") or 0) for m in meta.values())
    report = {
        "model_info": {
            "name": "OCAD detector set (TCN residual x3 + Isolation Forest + rules + level shifts)",
            "versions": dict(versions),
            "training_date": max((m.get("training_date") or m.get("created_at") or "") for m in meta.values()) if meta else None,
            "architecture": {n: t.architecture.to_dict() for n, t in tcn.items()},
            "parameters": params,
            "hyperparameters_source": {n: m.get("hyperparameters_source") for n, m in meta.items()},
        },
        "prediction_accuracy": forecast,
        "anomaly_detection": headline,
        "detectors": detection,
        "operational_metrics": {
            **ops_detect,
            "inference_latency_p95_ms": pr["latency_p95_ms"],
            "inference_latency_p99_ms": pr["latency_p99_ms"],
            "model_size_mb": sum(sizes.values()),
            "model_size_mb_by_model": sizes,
            "memory_usage_mb": pr["rss_after_stream_mib"] * 2**20 / 1e6,
            "import_and_load_s": pr["import_and_load_s"],
            "probe": {"samples": pr["samples"], "endpoint_id": pr["endpoint_id"], "heavy_modules_loaded": pr["heavy_modules_loaded"]},
        },
        "dataset_info": {
            "val_samples": len(val),
            "test_samples": len(test),
            "anomaly_rate_test": float(test["is_anomaly"].mean()) if labelled else None,
            "test_incidents": int(len(per_incident)) if labelled else None,
            "labelled": labelled,
        },
    }
    return report, test_scored, per_incident


def gate(candidate: Mapping[str, Any], production: Mapping[str, Any] | None, targets: GateTargets, bootstrap: bool) -> dict[str, Any]:
    """Pass only if the candidate meets the targets and is not worse than production.

    With no production version yet and ``bootstrap`` set, a candidate that misses targets is
    still let through (there is nothing better to serve) and the reasons are kept.
    """
    reasons: list[str] = []
    ad = candidate["anomaly_detection"]
    op = candidate["operational_metrics"]

    def below(name: str, value, target, higher_is_better: bool = True) -> None:
        if value is None:
            reasons.append(f"{name} not measured (target {'>' if higher_is_better else '<'} {target})")
        elif (value <= target) if higher_is_better else (value >= target):
            reasons.append(f"{name} {value:.4g} misses the target {'>' if higher_is_better else '<'} {target}")

    if ad.get("available", True):
        fa = ad.get("false_alerts_per_endpoint_day")
        if fa is None or fa > targets.false_alerts_per_endpoint_day:
            reasons.append(f"false_alerts_per_endpoint_day {fa if fa is None else round(fa, 3)} misses the target <= "
                           f"{targets.false_alerts_per_endpoint_day}")
        ir = ad.get("incident_recall")
        if ir is None or ir < targets.incident_recall:
            reasons.append(f"incident_recall {ir if ir is None else round(ir, 3)} misses the target >= {targets.incident_recall}")
        below("precision", ad["precision"], targets.precision)
        below("recall", ad["recall"], targets.recall)
        below("f1_score", ad["f1_score"], targets.f1)
        below("false_alarm_rate", ad["false_alarm_rate"], targets.false_alarm_rate, False)
        below("roc_auc", ad["roc_auc"], targets.roc_auc)
        below("mttd_seconds", op["mttd_seconds"], targets.mttd_seconds, False)
        if op["lead_time_minutes"] is not None:
            if op["lead_time_minutes"] < targets.lead_time_minutes:
                reasons.append(f"lead_time_minutes {op['lead_time_minutes']:.3g} misses the target >= {targets.lead_time_minutes}")
    else:
        reasons.append("no labels: detection quality cannot be measured")
    below("inference_latency_p95_ms", op["inference_latency_p95_ms"], targets.latency_p95_ms, False)
    below("model_size_mb", op["model_size_mb"], targets.model_size_mb, False)
    below("memory_usage_mb", op["memory_usage_mb"], targets.memory_mb, False)

    comparison = []
    if production is not None and production["anomaly_detection"].get("available", True) and ad.get("available", True):
        pa, po = production["anomaly_detection"], production["operational_metrics"]
        fa_c, fa_p = ad.get("false_alerts_per_endpoint_day"), pa.get("false_alerts_per_endpoint_day")
        rows = [
            ("false_alerts_per_endpoint_day", fa_c, fa_p,
             fa_p is None or (fa_c is not None and fa_c <= max(fa_p * 1.1, fa_p + 0.05))),
            ("f1_score", ad["f1_score"], pa["f1_score"], ad["f1_score"] >= pa["f1_score"] - targets.f1_tolerance),
            ("false_alarm_rate", ad["false_alarm_rate"], pa["false_alarm_rate"], ad["false_alarm_rate"] <= pa["false_alarm_rate"] + targets.far_tolerance),
            ("mttd_seconds", op["mttd_seconds"], po["mttd_seconds"],
             po["mttd_seconds"] is None or (op["mttd_seconds"] is not None and op["mttd_seconds"] <= po["mttd_seconds"] + targets.mttd_tolerance_s)),
            ("lead_time_minutes", op["lead_time_minutes"], po["lead_time_minutes"],
             po["lead_time_minutes"] is None or (op["lead_time_minutes"] is not None and op["lead_time_minutes"] >= po["lead_time_minutes"] - targets.lead_time_tolerance_min)),
        ]
        for name, c, p, ok in rows:
            comparison.append({"metric": name, "candidate": c, "production": p, "not_worse": bool(ok)})
            if not ok:
                reasons.append(f"{name} worse than production ({c} vs {p})")
    meets = not reasons
    bootstrapped = production is None and bootstrap and not meets
    return {
        "passed": meets or bootstrapped,
        "meets_targets_and_not_worse": meets,
        "bootstrap": bootstrapped,
        "reasons": reasons,
        "comparison": comparison,
        "targets": asdict(targets),
    }
