"""Group ``evaluation``: performance reports, the quality gate and promotion.

``performance_reports`` replays the validation and test streams through the thin detector
package with the candidate versions, its inputs from ``tcn_models`` and
``isolation_forest_model`` (the versions they trained or reused), and with the production versions, writes
``performance_report.json`` (seed section 6.2) next to every candidate version, and evaluates
the blocking ``quality_gate`` check. ``model_promotion`` runs only when that check passed.
"""

import json
from typing import Optional

import dagster as dg
import matplotlib.pyplot as plt
import pandas as pd

from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS
from ocad_pipeline.defs.configs import config_from_dataclass
from ocad_pipeline.defs.resources import ExperimentTracker, ModelRegistryResource, OcadPaths
from ocad_pipeline.evaluation import pr_curve, roc_curve
from ocad_pipeline.plots import TYPE_COLORS, figure_markdown
from ocad_pipeline.reporting import SCORES, GateTargets, evaluate_versions, gate, production_versions

REPORT_NAME = "performance_report.json"


class QualityGateConfig(config_from_dataclass(GateTargets)):  # type: ignore[misc]
    """Targets of the quality gate (the fields of ``reporting.GateTargets``, the seed's 6.1.2 /
    6.1.3) and evaluation settings."""

    pipeline_only = {
        "bootstrap": "with no production version yet, let a candidate that misses targets through",
        "probe_samples": "samples of the latency/memory probe in a fresh process",
        "timeline_endpoint": "the endpoint of the timeline plot (default: the one with most incidents)",
        "versions": "evaluate other versions than the model assets produced",
    }

    #: with no production version yet, let a candidate that misses targets through (reasons kept)
    bootstrap: bool = True
    probe_samples: int = 3000
    timeline_endpoint: Optional[str] = None
    #: model -> version to evaluate instead of what tcn_models / isolation_forest_model produced
    #: (e.g. a version registered by hand); models not named keep their input's version
    versions: dict[str, str] = {}

    def targets(self) -> GateTargets:
        return self.to_dataclass()


def candidate_versions(tables: list[pd.DataFrame], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """model -> version from the ``versions`` tables of the model assets, then ``overrides``."""
    out: dict[str, str] = {}
    for t in tables:
        out.update({str(r.model): str(r.version) for r in t.itertuples()})
    return {**out, **(overrides or {})}


def _registered(reg, name: str) -> set[str]:
    try:
        return {i.version for i in reg.list_versions(name)}
    except Exception:  # noqa: BLE001 - a model never registered has no versions
        return set()


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _detection_table(report: dict) -> str:
    det = report["detectors"]
    if not det.get("available", True):
        return "_detection metrics are not available: the data has no labels_"
    rows = [
        "| detector | threshold (val) | point P | point R | point F1 | FAR | ROC-AUC | event P | event R | event F1 | MTTD s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SCORES:
        d = det[name]
        p, e = d["pointwise"], d["eventwise"]
        rows.append(
            f"| {name} | {_fmt(d['threshold'])} | {_fmt(p['precision'])} | {_fmt(p['recall'])} | {_fmt(p['f1_score'])} | "
            f"{_fmt(p['false_alarm_rate'])} | {_fmt(p['roc_auc'])} | {_fmt(e['precision'])} | {_fmt(e['recall'])} | "
            f"{_fmt(e['f1_score'])} | {_fmt(e['mttd_seconds'])} |"
        )
    a = det["alerts"]["eventwise"]
    rows.append(
        f"| **alerts** (system) | – | – | – | – | – | – | {_fmt(a['precision'])} | {_fmt(a['recall'])} | {_fmt(a['f1_score'])} | {_fmt(a['mttd_seconds'])} |"
    )
    head = [
        "| alert episodes | false alerts / endpoint-day | incident recall | incidents found | MTTD median s | MTTD mean s | lead time P50 min |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {a['predicted_events']} | **{_fmt(a['false_alarms_per_endpoint_day'])}** | **{_fmt(a['recall'])}** | "
        f"{a['detected']} / {a['incidents']} | {_fmt(a.get('mttd_median_seconds'))} | {_fmt(a['mttd_seconds'])} | {_fmt(a['lead_time_p50_minutes'])} |",
    ]
    types = ["", "| incident type (test) | incidents | found by alerts | recall | MTTD median s | MTTD mean s | lead time P50 min |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for typ, t in (a.get("per_type") or {}).items():
        types.append(f"| {typ} | {t['incidents']} | {t['detected']} | {_fmt(t['recall'])} | {_fmt(t['mttd_median_seconds'])} | "
                     f"{_fmt(t['mttd_seconds'])} | {_fmt(t['lead_time_p50_minutes'])} |")
    return (
        "\n".join(head) + "\n" + "\n".join(types) + "\n\n" + "\n".join(rows)
        + "\n\npoint-wise: every sample is a decision; event-wise: an incident counts once, a run of flagged samples "
        "(for the system: an alert episode) is one predicted event."
    )


def _gate_table(g: dict, cand: dict) -> str:
    ad, op = cand["anomaly_detection"], cand["operational_metrics"]
    t = g["targets"]
    rows = ["| metric | candidate | target |", "|---|---:|---:|"]
    if ad.get("available", True):
        for k, tk, sign in (("false_alerts_per_endpoint_day", "false_alerts_per_endpoint_day", "<="),
                            ("incident_recall", "incident_recall", ">="), ("precision", "precision", ">"), ("recall", "recall", ">"), ("f1_score", "f1", ">"),
                            ("false_alarm_rate", "false_alarm_rate", "<"), ("roc_auc", "roc_auc", ">")):
            rows.append(f"| {k} | {_fmt(ad[k])} | {sign} {t[tk]} |")
    for k, tk, sign in (("mttd_seconds", "mttd_seconds", "<"), ("lead_time_minutes", "lead_time_minutes", ">="),
                        ("inference_latency_p95_ms", "latency_p95_ms", "<"), ("model_size_mb", "model_size_mb", "<"),
                        ("memory_usage_mb", "memory_mb", "<")):
        rows.append(f"| {k} | {_fmt(op[k])} | {sign} {t[tk]} |")
    out = "\n".join(rows)
    if g["comparison"]:
        out += "\n\n| vs production | candidate | production | not worse |\n|---|---:|---:|---|\n"
        out += "\n".join(f"| {r['metric']} | {_fmt(r['candidate'])} | {_fmt(r['production'])} | {'yes' if r['not_worse'] else '**no**'} |" for r in g["comparison"])
    verdict = "PASSED" if g["passed"] else "FAILED"
    if g["bootstrap"]:
        verdict = "WARNING: targets missed; promoted only because no production version exists yet (bootstrap)"
    out += f"\n\n**{verdict}**" + ("".join(f"\n- {r}" for r in g["reasons"]) if g["reasons"] else "")
    return out


def _curves(test: pd.DataFrame) -> str:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    y = test["is_anomaly"].to_numpy()
    for name in SCORES:
        col = "composite" if name == "composite" else f"score_{name}"
        s = test[col].to_numpy()
        fpr, tpr = roc_curve(y, s)
        rec, prec = pr_curve(y, s)
        lw = 2.2 if name == "composite" else 1.0
        a1.plot(fpr, tpr, lw=lw, label=name)
        a2.plot(rec, prec, lw=lw, label=name)
    a1.plot([0, 1], [0, 1], "k:", lw=0.6)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test, point-wise)")
    a2.set(xlabel="recall", ylabel="precision", title="precision-recall (test, point-wise)")
    a1.legend(fontsize=7)
    return figure_markdown(fig, "roc and pr")


def _timeline(test: pd.DataFrame, raw_test: pd.DataFrame, incidents: pd.DataFrame, endpoint: str, threshold: float) -> str:
    sel = (raw_test["endpoint_id"] == endpoint).to_numpy()
    g = raw_test[sel]
    sc = test[sel]
    t = pd.to_datetime(g["timestamp_ms"].to_numpy(), unit="ms", utc=True)
    sigs = [s for s in VALUE_SIGNALS if g[s].notna().any()]
    fig, axes = plt.subplots(len(sigs) + 1, 1, figsize=(11, 1.9 * (len(sigs) + 1)), sharex=True, squeeze=False)
    inc = incidents[(incidents["endpoint_id"] == endpoint) & (incidents["end"] >= g["timestamp_ms"].min()) & (incidents["start"] <= g["timestamp_ms"].max())]
    for ax, s in zip(axes[:-1, 0], sigs):
        ax.plot(t, g[s].to_numpy(), lw=0.6)
        ax.set_ylabel(f"{s}\n[{SIGNALS[s].unit}]", fontsize=7)
    ax = axes[-1, 0]
    ax.plot(t, sc["composite"].to_numpy(), lw=0.7, color="black", label="composite")
    ax.axhline(threshold, color="grey", ls="--", lw=0.6, label="threshold (val)")
    al = sc["alert"].to_numpy()
    ax.scatter(t[al], sc["composite"].to_numpy()[al], color="red", s=14, zorder=3, label="alert")
    ax.set_ylabel("score", fontsize=7)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    for a in axes[:, 0]:
        for r in inc.itertuples():
            a.axvspan(pd.to_datetime(r.start, unit="ms", utc=True), pd.to_datetime(r.end, unit="ms", utc=True),
                      color=TYPE_COLORS.get(str(r.type), "grey"), alpha=0.25, lw=0)
    axes[0, 0].set_title(f"{endpoint}: test stream, incidents shaded, composite score and alerts", fontsize=9)
    return figure_markdown(fig, "timeline")


@dg.asset(
    group_name="evaluation",
    io_manager_key="tables",
    metadata={"ocad/files": {"summary": "reports/candidates.parquet"}},
    check_specs=[
        dg.AssetCheckSpec(
            "quality_gate",
            asset="performance_reports",
            blocking=True,
            description="candidate versions meet the seed's targets and are not worse than production on the same test stream",
        )
    ],
    kinds={"pandas"},
)
def performance_reports(
    context: dg.AssetExecutionContext,
    config: QualityGateConfig,
    tcn_models: dict[str, pd.DataFrame],
    isolation_forest_model: dict[str, pd.DataFrame],
    sample_splits: dict[str, pd.DataFrame],
    raw_metrics: dict[str, pd.DataFrame],
    model_registry: ModelRegistryResource,
    paths: OcadPaths,
    tracking: ExperimentTracker,
):
    """Forecast accuracy, detection (per detector and fused; point-wise and event-wise; thresholds
    from validation only), MTTD, lead time, latency, model size and memory of the model versions
    that tcn_models and isolation_forest_model trained or reused (its inputs), measured through the thin detector package on the test split and compared with
    production. Writes performance_report.json into each candidate version's registry folder
    (reports/) and data/reports/; the quality_gate check decides promotion."""
    reg = model_registry.get_registry()
    root = model_registry.registry_root
    cand = candidate_versions([tcn_models["versions"], isolation_forest_model["versions"]], config.versions)
    if not cand:
        raise dg.Failure("tcn_models and isolation_forest_model produced no model version (and config.versions names none)")
    unknown = {n: v for n, v in cand.items() if v not in _registered(reg, n)}
    if unknown:
        raise dg.Failure(f"performance_reports: versions not in the registry at {root}: {unknown}")
    prod = production_versions(reg)
    labelled = bool(raw_metrics["source"]["labelled"].iloc[0]) if "source" in raw_metrics else True
    val, test = sample_splits["val"], sample_splits["test"]
    incidents = raw_metrics["incidents"]
    context.log.info(f"evaluating candidates {cand} (production: {prod or 'none'})")
    report, scored, per_incident = evaluate_versions(root, cand, val, test, incidents, labelled, config.probe_samples)
    prod_report = None
    if prod and prod != cand:
        context.log.info(f"evaluating production {prod} on the same streams")
        prod_report, _, _ = evaluate_versions(root, {**cand, **prod}, val, test, incidents, labelled, config.probe_samples)
    decision = gate(report, prod_report, config.targets(), bootstrap=config.bootstrap and not prod)
    report["gate"] = decision
    report["production"] = {"versions": prod, "report": prod_report}
    report["dagster_run_id"] = context.run_id
    blob = json.dumps(report, indent=2, default=float).encode()
    written = []
    for name, v in cand.items():
        written.append(str(reg.write_report(name, v, REPORT_NAME, blob)))
    out_dir = paths.reports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_NAME).write_bytes(blob)
    if not per_incident.empty:
        per_incident.to_csv(out_dir / "incidents_detected.csv", index=False)
    tracking.log_run("performance_reports", params={"versions": cand}, metrics=report, artifacts={REPORT_NAME: blob.decode()})

    summary = pd.DataFrame(
        [{"model": n, "candidate": v, "production": prod.get(n), "gate_passed": decision["passed"]} for n, v in sorted(cand.items())]
    )
    md: dict = {
        "versions": dg.MetadataValue.md(summary.to_markdown(index=False)),
        "gate": dg.MetadataValue.md(_gate_table(decision, report)),
        "report_paths": dg.MetadataValue.json({"registry": written, "copy": str(out_dir / REPORT_NAME)}),
        "operational": dg.MetadataValue.json(report["operational_metrics"]),
    }
    if labelled:
        md["detection"] = dg.MetadataValue.md(_detection_table(report))
        md["roc_pr"] = dg.MetadataValue.md(_curves(scored))
        ep = config.timeline_endpoint or str(incidents[incidents["endpoint_id"].isin(test["endpoint_id"].unique())]["endpoint_id"].mode().iloc[0])
        md["timeline"] = dg.MetadataValue.md(_timeline(scored, test.reset_index(drop=True), incidents, ep, report["detectors"]["composite"]["threshold"]))
        md["f1_event_alerts"] = report["anomaly_detection"]["f1_score"]
        md["false_alerts_per_endpoint_day"] = report["anomaly_detection"]["false_alerts_per_endpoint_day"]
        md["incident_recall"] = report["anomaly_detection"]["incident_recall"]
        md["mttd_seconds"] = report["operational_metrics"]["mttd_seconds"] if report["operational_metrics"]["mttd_seconds"] is not None else float("nan")
    else:
        md["detection"] = dg.MetadataValue.md("_the data has no labels: detection metrics are not available_")
    forecast = report["prediction_accuracy"]
    if any(forecast.values()):
        rows = ["| metric | predictor | R² | MSE | MAE | RMSE |", "|---|---|---:|---:|---:|---:|"]
        for m, f in forecast.items():
            for p, v in (f or {}).items():
                rows.append(f"| {m} | {p} | {_fmt(v.get('r2'))} | {_fmt(v.get('mse'))} | {_fmt(v.get('mae'))} | {_fmt(v.get('rmse'))} |")
        md["forecast"] = dg.MetadataValue.md("\n".join(rows))
    yield dg.Output({"summary": summary}, metadata=md)
    unchanged = bool(prod) and prod == cand  # same inputs: the candidates are the production versions
    yield gate_check_result(decision, _gate_table(decision, report), unchanged=unchanged)
    if unchanged and not decision["passed"]:
        context.log.warning(
            "quality gate: no new candidate (the production versions were reused), and they miss targets: "
            + "; ".join(decision["reasons"])
        )
    if decision["bootstrap"]:
        context.log.warning(
            "quality gate: bootstrap promotion although targets are missed (no production version yet): "
            + "; ".join(decision["reasons"])
        )


def gate_check_result(decision: dict, table_md: str, unchanged: bool = False) -> dg.AssetCheckResult:
    """The quality_gate check. A bootstrap promotion (no production yet, targets missed) is a
    failed check of severity WARN, so the UI shows a warning with the missed targets and
    model_promotion still runs (a blocking check only stops downstream on ERROR). So is a run
    whose candidates *are* the production versions (same inputs, nothing new to promote) when
    they miss targets: a warning about production, not a failed run. A new candidate that
    misses targets or is worse than production fails with ERROR and blocks promotion."""
    bootstrap = bool(decision.get("bootstrap"))
    warn = bootstrap or (unchanged and not decision["passed"])
    if bootstrap:
        outcome = "bootstrap: promoted although targets are missed"
    elif warn:
        outcome = "no new candidate: production unchanged, and it misses targets"
    else:
        outcome = "passed" if decision["passed"] else "failed"
    return dg.AssetCheckResult(
        check_name="quality_gate",
        passed=bool(decision["passed"]) and not warn,
        severity=dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR,
        metadata={
            "gate": dg.MetadataValue.md(table_md),
            "reasons": dg.MetadataValue.json(decision["reasons"]),
            "outcome": outcome,
            "missed_targets": dg.MetadataValue.json(decision["reasons"] if warn else []),
        },
    )


@dg.asset(group_name="evaluation", kinds={"python"})
def model_promotion(context: dg.AssetExecutionContext, performance_reports: dict[str, pd.DataFrame], model_registry: ModelRegistryResource):
    """Promote the candidate versions to production. Runs only when the quality_gate check of
    performance_reports passed (blocking check); a manual `ocad-models promote/rollback` stays
    possible at any time."""
    reg = model_registry.get_registry()
    rows = []
    for r in performance_reports["summary"].itertuples():
        before = reg.production_version(r.model)
        if before == r.candidate:
            rows.append({"model": r.model, "production": before, "action": "unchanged"})
            continue
        reg.promote(r.model, r.candidate, reason="quality gate passed (performance_reports)")
        rows.append({"model": r.model, "production": r.candidate, "action": f"promoted from {before}"})
        context.log.info(f"promoted {r.model} {r.candidate} (was {before})")
    table = pd.DataFrame(rows)
    return dg.MaterializeResult(metadata={"promotions": dg.MetadataValue.md(table.to_markdown(index=False))})
