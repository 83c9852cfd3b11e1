"""``ocad-detect``: run the online detectors over a recorded CSV or Parquet file.

Examples::

    ocad-detect samples.parquet --alerts alerts.jsonl --scores scores.parquet
    ocad-detect probes_long.csv --format long --config config/detection.yaml
    ocad-detect samples.csv --model-dir /srv/ocad/models --progress > alerts.jsonl

Input: *wide* (timestamp, endpoint_id, one column per signal: udp_echo_rtt_ms, ecpri_ow_us,
lbm_rtt_ms, lbm_success) or *long* (timestamp, endpoint_id, metric_name, value). Timestamps are
epoch milliseconds (numbers below 1e11 are read as seconds) or ISO 8601 text. Rows are scored
in file order; bad rows become ``invalid`` results and are counted, they never stop the run.

Output: alerts as JSON lines (``--alerts``, default stdout), per-sample scores as Parquet
(``--scores``), and a summary table on stderr with the most frequent reasons samples were not
scored. Unknown columns are named in a warning (an error with ``--strict``).

Exit codes (the first that applies):

  0  done: every sample scored (alerts or not)
  2  bad usage, unreadable input or configuration, unknown unit, duplicate columns, unknown
     columns with --strict (one ``error: ...`` line on stderr)
  3  nothing scored: no sample of the file was usable (the summary lists why)
  4  models refused: a model in the registry failed verification or validation; the other
     detectors ran (``error:`` lines name each model and file)
  5  some samples not scored (invalid / future / refused / error), only with --strict
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ocad_detectors._table import text_table

__all__ = ["build_parser", "main"]

_EXAMPLES = (__doc__ or "").split("Examples::\n", 1)[-1].split("\nInput:", 1)[0].strip("\n")
#: below this many samples no progress bar is shown unless --progress asks for one
_LONG_FILE = 50_000
EXIT_OK, EXIT_USAGE, EXIT_NOTHING_SCORED, EXIT_MODELS_REFUSED, EXIT_SOME_INVALID = 0, 2, 3, 4, 5
#: statuses that mean "looked at and used" (duplicates / out-of-order are normal replay noise)
_SCORED = ("ok", "duplicate", "out_of_order")


def printable(text: object, limit: int = 120) -> str:
    """Text safe for a terminal: control characters (escape sequences) shown escaped."""
    s = str(text)
    s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def reason_key(error: str) -> str:
    """One error message without its particular values, so equal causes count together."""
    e = re.sub(r"got .*", "got ...", error)
    e = re.sub(r"'[^']*'", "'...'", e)
    return re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?", "N", e)


def top_reasons(result: Any, n: int = 5) -> list[tuple[str, int]]:
    """Most frequent reasons (per "; "-separated part) samples were not scored."""
    c: Counter[str] = Counter()
    for st, err in zip(result.status.tolist(), result.error):
        if str(st) not in _SCORED and err:
            for part in dict.fromkeys(str(err).split("; ")):
                c[f"{st}: {reason_key(part)}"] += 1
    return c.most_common(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ocad-detect",
        description="Score recorded CFM-lite samples with the OCAD detectors (rules, level shifts, TCN residual, "
        "Isolation Forest) using the production models of the registry; write alerts and per-sample scores.",
        epilog="examples:\n" + _EXAMPLES + "\n\nModel directory precedence: --model-dir > $OCAD_MODEL_DIR > "
        "detection.model_path in --config > data/models. A missing or corrupt model is reported once and "
        "the remaining detectors keep working.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="samples file (.csv or .parquet)")
    p.add_argument("--config", type=Path, help="detection YAML (see config/detection.example.yaml); default: built-in defaults")
    p.add_argument("--model-dir", type=Path, help="model registry root (overrides config and $OCAD_MODEL_DIR)")
    p.add_argument("--format", choices=("auto", "wide", "long"), default="auto", help="input layout (default: auto-detect)")
    p.add_argument(
        "--signal-map", action="append", default=[], metavar="NAME=SIGNAL",
        help="read column / metric NAME as an OCAD signal, e.g. rtt=udp_echo_rtt_ms (repeatable)",
    )
    p.add_argument(
        "--unit", action="append", default=[], metavar="SIGNAL=UNIT",
        help="unit of a wide column (ns, us, ms, s), converted to the signal's unit, e.g. ecpri_ow_us=ms "
        "(repeatable; long files may carry a 'unit' column instead)",
    )
    p.add_argument(
        "--shadow", action="append", default=[], metavar="MODEL=VERSION",
        help="champion/challenger: also score with this registry version (e.g. tcn_ecpri=1.1.0, repeatable); "
        "its scores go to --scores as challenger_* columns and its would-be alerts are counted, never emitted",
    )
    p.add_argument(
        "--missing-value", action="append", type=float, default=[], metavar="CODE",
        help="a raw delay value that means 'no reply' (e.g. RIPE Atlas -3 and -4; repeatable): read as a missing reply",
    )
    p.add_argument(
        "--labels", type=Path, metavar="PATH",
        help="labelled incidents (windows: endpoint_id,start,end[,anomaly_type][,outage_start]; or per sample: "
        "endpoint_id,timestamp,is_anomaly[,anomaly_type]); the summary then shows false alerts per endpoint-day, "
        "incident recall, time to detect and lead time, per incident type",
    )
    p.add_argument(
        "--alerts", default="-", metavar="PATH",
        help="alerts, episode resolutions and level changes as JSON lines (field 'event': alert / resolved / change); "
        "'-' = stdout (default)",
    )
    p.add_argument("--scores", type=Path, metavar="PATH", help="per-sample scores as Parquet (.csv also accepted)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", help="always show a progress bar on stderr")
    bar.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.add_argument("--top", type=int, default=20, metavar="N", help="endpoints listed in the summary (default 20)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary table, only warnings")
    p.add_argument("-v", "--verbose", action="store_true", help="log model loading and reloads")
    p.add_argument(
        "--strict", action="store_true",
        help="unknown columns are an error (exit 2) and any sample not scored gives exit code 5",
    )
    return p


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise ValueError(f"{flag} expects NAME=VALUE, got {it!r}")
        out[k.strip()] = v.strip()
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return text_table(headers, rows, numeric=True)


class _Progress:
    """tqdm bar fed with cumulative counts; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.done = 0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="sample", unit_scale=True, file=sys.stderr, desc="scoring", leave=False)
            except ImportError:  # pragma: no cover - tqdm is a dependency, but stay usable without it
                self.bar = None

    def __call__(self, done: int) -> None:
        if self.bar is not None and done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(result: Any, elapsed_s: float, versions: dict[str, str | None], top: int = 20) -> str:
    """The end-of-run table: sample statuses, alerts by severity, busiest endpoints, models."""
    n = len(result)
    status = Counter(str(s) for s in result.status.tolist())
    sev = Counter(a.severity for a in result.alerts)
    eps = Counter(a.endpoint_id for a in result.alerts)
    endpoints = {e for e in result.endpoint_id if e is not None}
    rate = f"{n / elapsed_s:,.0f}/s" if elapsed_s > 0 else "-"
    rows = [
        ("samples", f"{n:,}"),
        ("  ok", f"{status.get('ok', 0):,}"),
        ("  invalid", f"{status.get('invalid', 0):,}"),
        ("  duplicate", f"{status.get('duplicate', 0):,}"),
        ("  out_of_order", f"{status.get('out_of_order', 0):,}"),
    ]
    for st in ("future", "refused", "error"):
        if status.get(st):
            rows.append((f"  {st}", f"{status[st]:,}"))
    rows += [
        ("endpoints", f"{len(endpoints):,}"),
        ("alerts", f"{len(result.alerts):,}"),
        ("  critical", f"{sev.get('critical', 0):,}"),
        ("  major", f"{sev.get('major', 0):,}"),
        ("  warning", f"{sev.get('warning', 0):,}"),
        ("episodes resolved", f"{len(result.resolutions):,}"),
        ("level changes", f"{len(result.change_records):,}"),
        ("scoring time", f"{elapsed_s:.2f} s ({rate})"),
    ]
    out = ["OCAD detection summary", _table(("what", "count"), rows)]
    if eps:
        per = []
        for ep, cnt in eps.most_common(top):
            s = Counter(a.severity for a in result.alerts if a.endpoint_id == ep)
            per.append((printable(ep, 60), cnt, s.get("critical", 0), s.get("major", 0), s.get("warning", 0)))
        out += ["", "alerts per endpoint" + (f" (top {top} of {len(eps)})" if len(eps) > top else ""),
                _table(("endpoint", "alerts", "critical", "major", "warning"), per)]
    reasons = top_reasons(result)
    if reasons:
        out += ["", "why samples were not scored (top reasons)", _table(("reason", "samples"), [(printable(r, 110), f"{c:,}") for r, c in reasons])]
    out += ["", "models", _table(("model", "version"), [(k, v or "not loaded") for k, v in versions.items()])]
    return "\n".join(out)


def events(result: Any) -> list[dict[str, Any]]:
    """Alerts, resolutions and level changes as JSON-ready records, in sample-time order."""
    items: list[tuple[int, int, dict[str, Any]]] = []
    for a in result.alerts:
        items.append((a.timestamp_ms, 1, a.to_dict()))
    for r in result.resolutions:
        items.append((r.resolved_ms, 0, r.to_dict()))
    for c in result.change_records:
        items.append((c.detected_ms, 2, c.to_dict()))
    items.sort(key=lambda x: (x[0], x[1]))
    return [d for _, _, d in items]


def _write_events(result: Any, dest: str, stdout: TextIO) -> None:
    lines = (json.dumps(d, ensure_ascii=False) + "\n" for d in events(result))
    if dest == "-":
        stdout.writelines(lines)
        stdout.flush()
        return
    with open(dest, "w", encoding="utf-8") as fh:
        fh.writelines(lines)


def labelled_summary(result: Any, incidents: Any) -> str:
    """The operator's view of a labelled replay: false alerts per endpoint-day first."""
    from ocad_detectors.events import episode_flags, eventwise

    frame = result.to_frame()
    frame = frame[frame["status"] == "ok"]
    ev = eventwise(frame, episode_flags(frame), incidents)
    m = ev.metrics

    def f(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    rows = [
        ("false alerts per endpoint-day", f(m["false_alarms_per_endpoint_day"])),
        ("incident recall", f"{f(m['recall'])} ({m['detected']} of {m['incidents']})"),
        ("alert episodes (false)", f"{m['predicted_events']} ({m['false_alarm_events']})"),
        ("time to detect median / mean s", f"{f(m['mttd_median_seconds'])} / {f(m['mttd_seconds'])}"),
        ("lead time before outage P50 min", f"{f(m['lead_time_p50_minutes'])} ({m['warned_before_outage']} of {m['outage_incidents']} warned)"),
        ("endpoint-days scored", f(m["endpoint_days"])),
    ]
    per = [(printable(t), v["incidents"], v["detected"], f(v["recall"]), f(v["mttd_median_seconds"])) for t, v in m["per_type"].items()]
    out = ["against the labels (event-wise: an incident counts once, an alert episode once)", _table(("what", "value"), rows)]
    if per:
        out += ["", _table(("incident type", "incidents", "found", "recall", "MTTD median s"), per)]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=err)

    from ocad_detectors.config import DetectionConfig, load_config
    from ocad_detectors.pipeline import DetectionPipeline
    from ocad_detectors.samples import read_samples
    from ocad_detectors.shadow import ShadowScoring

    try:
        config = load_config(args.config) if args.config else DetectionConfig()
        frame = read_samples(
            args.input, args.format, _pairs(args.signal_map, "--signal-map"), _pairs(args.unit, "--unit"), strict=args.strict,
            missing_values=tuple(args.missing_value),
        )
        incidents = None
        if args.labels is not None:
            from ocad_detectors.events import read_incidents

            incidents = read_incidents(args.labels)
    except (OSError, ValueError) as e:
        print(f"error: {printable(e, 2000)}", file=err)
        return 2
    except Exception as e:
        print(f"error: cannot read {args.input}: {type(e).__name__}: {printable(e, 2000)}", file=err)
        return 2
    if frame.attrs.get("ignored_columns"):
        print(f"warning: {printable(frame.attrs['ignored_columns'], 2000)}; they are ignored", file=err)
    try:
        challenger_versions = _pairs(args.shadow, "--shadow")
        # champion/challenger: production plus a pinned challenger, see ocad_detectors.shadow
        shadowing = ShadowScoring(challenger_versions, config, args.model_dir) if challenger_versions else None
        pipe = shadowing.production if shadowing is not None else DetectionPipeline(config, args.model_dir)
    except ValueError as e:  # e.g. an unreadable trust.public_key
        print(f"error: {printable(e, 2000)}", file=err)
        return 2
    if shadowing is not None and (missing := shadowing.missing_versions()):
        print(f"error: --shadow versions could not be loaded: {missing} (see warnings above)", file=err)
        return 2
    show = not args.no_progress and (args.progress or (err.isatty() and len(frame) >= _LONG_FILE))
    bar = _Progress(len(frame), show)
    t0 = time.perf_counter()
    shadow = None
    try:
        if shadowing is not None:
            result, shadow = shadowing.score_frame(frame, progress=bar)
        else:
            result = pipe.score_frame(frame, progress=bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    try:
        _write_events(result, args.alerts, out)
        if args.scores is not None:
            df = result.to_frame()
            if shadow is not None:
                sf = shadow.to_frame()
                for c in [c for c in sf.columns if c.startswith("score_")] + ["composite", "alert", "severity"]:
                    df[f"challenger_{c}"] = sf[c].to_numpy()
            args.scores.parent.mkdir(parents=True, exist_ok=True)
            if args.scores.suffix.lower() == ".csv":
                df.to_csv(args.scores, index=False)
            else:
                df.to_parquet(args.scores, index=False)
    except OSError as e:
        print(f"error: {e}", file=err)
        return 2
    if not args.quiet:
        print(summary(result, elapsed, pipe.model_versions, args.top), file=err)
        if incidents is not None:
            print("\n" + labelled_summary(result, incidents), file=err)
        if shadowing is not None:
            s = shadowing.summary()
            rows = [
                ("alerts (production, emitted)", f"{s['alerts']['production']:,}"),
                ("alerts (challenger, not emitted)", f"{s['alerts']['challenger']:,}"),
                ("samples where they disagree on alerting", f"{s['alert_disagreements']:,}"),
                ("mean composite production / challenger", f"{s['mean_composite']['production']:.4f} / {s['mean_composite']['challenger']:.4f}"),
            ]
            rows += [(f"challenger {k}", v or "not loaded") for k, v in s["challenger_versions"].items()]
            print("\nshadow scoring (champion/challenger)\n" + _table(("what", "value"), rows), file=err)
    return _exit_code(result, pipe.model_errors, args.strict, err)


def _exit_code(result: Any, model_errors: list[str], strict: bool, err: TextIO) -> int:
    """The documented exit code, each non-zero one with its ``error:`` lines on stderr."""
    status = Counter(str(s) for s in result.status.tolist())
    n = len(result)
    scored = sum(status.get(s, 0) for s in _SCORED)
    for m in model_errors:
        print(f"error: model refused: {printable(m, 2000)}", file=err)
    if n == 0:
        print("warning: the file holds no samples", file=err)
    if n and status.get("ok", 0) == 0:
        why = "; ".join(f"{r} ({c:,})" for r, c in top_reasons(result, 3))
        print(f"error: nothing scored: none of the {n:,} samples was usable" + (f": {printable(why, 500)}" if why else ""), file=err)
        return EXIT_NOTHING_SCORED
    if model_errors:
        return EXIT_MODELS_REFUSED
    if strict and scored < n:
        print(f"error: {n - scored:,} of {n:,} samples not scored (--strict)", file=err)
        return EXIT_SOME_INVALID
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
