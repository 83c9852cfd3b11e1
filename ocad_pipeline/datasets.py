"""Turn raw samples into labelled, leak-free train/val/test datasets.

Splits are made **by time, per endpoint**: the first 70 % of an endpoint's samples train, the
next 15 % validate, the last 15 % test, and ``gap`` samples between two splits belong to none,
so no sliding window (TCN sequence or feature window) can span two splits. Shuffling
overlapping windows before splitting is the leak DOMAIN.md warns about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ocad_detectors.features import FeatureConfig, ReferenceStats, features_frame
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES, VALUE_SIGNALS

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How samples become datasets. The trainers read the sequence length back from the data."""

    sequence_length: int = 10
    sequence_stride: int = 2
    feature_window: int = 12
    feature_stride: int = 12
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    ewma_alpha: float = 0.3
    cusum_k: float = 0.5
    #: if > 0: the first ``train_days`` of each endpoint form the training split (the window an
    #: operator vouches for as healthy in unlabelled recordings); the rest is split val:test
    #: in the proportion val_fraction : (1 - train_fraction - val_fraction)
    train_days: float = 0.0

    def __post_init__(self) -> None:
        if self.sequence_length < 2:
            raise ValueError(f"sequence_length must be >= 2, got {self.sequence_length}")
        if self.sequence_stride < 1 or self.feature_stride < 1:
            raise ValueError("strides must be >= 1")
        if not (0 < self.train_fraction < 1 and 0 < self.val_fraction < 1 and self.train_fraction + self.val_fraction < 1):
            raise ValueError("train_fraction and val_fraction must be in (0, 1) with a sum below 1")

    @property
    def gap_samples(self) -> int:
        """Samples left out between splits: at least one full window of either kind."""
        return max(self.sequence_length + 1, self.feature_window)

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(window=self.feature_window, ewma_alpha=self.ewma_alpha, cusum_k=self.cusum_k)


def split_labels(samples: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """'train' / 'val' / 'test' / 'gap' for each row, by time order within its endpoint."""
    out = np.empty(len(samples), dtype=object)
    g = cfg.gap_samples
    order = samples.sort_values(["endpoint_id", "timestamp_ms"], kind="stable")
    for _, idx in order.groupby("endpoint_id", sort=False).indices.items():
        rows = order.index.to_numpy()[idx]
        n = len(rows)
        if cfg.train_days > 0:
            ts = order["timestamp_ms"].to_numpy()[idx]
            b1 = int(np.searchsorted(ts, ts[0] + cfg.train_days * 86_400_000, side="left"))
            test_fraction = 1.0 - cfg.train_fraction - cfg.val_fraction
            b2 = b1 + int((n - b1) * cfg.val_fraction / (cfg.val_fraction + test_fraction))
        else:
            b1 = int(n * cfg.train_fraction)
            b2 = int(n * (cfg.train_fraction + cfg.val_fraction))
        lab = np.full(n, "gap", dtype=object)
        lab[:b1] = "train"
        lab[min(b1 + g, n) : b2] = "val"
        lab[min(b2 + g, n) :] = "test"
        out[samples.index.get_indexer(rows)] = lab
    return out


def metric_anomaly_flags(samples: pd.DataFrame, incidents: pd.DataFrame, signal: str) -> np.ndarray:
    """Per sample: inside an incident that affects ``signal`` (e.g. a UDP spike is no eCPRI anomaly)."""
    affected = incidents.loc[incidents["signals"].astype(str).str.split(",").map(lambda s: signal in s), "incident_id"]
    return samples["incident_id"].isin(set(affected.astype(str))).to_numpy()


def timeseries_rows(
    samples: pd.DataFrame, incidents: pd.DataFrame, split: np.ndarray, which: str, metric: str, cfg: SplitConfig,
    capabilities: dict[str, set[str]],
) -> pd.DataFrame:
    """TCN rows of one split and metric: the previous N values and the next value (target).

    ``is_anomaly``/``anomaly_type`` describe the target sample for this metric;
    ``window_anomalous`` is true when any sample of the window (inputs or target) is.
    """
    sig = METRIC_SIGNAL[metric]
    n_seq = cfg.sequence_length
    flags = metric_anomaly_flags(samples, incidents, sig)
    parts = []
    sel_split = split == which
    for ep, g in samples[sel_split].groupby("endpoint_id", sort=True):
        if metric not in capabilities[str(ep)]:
            continue
        g = g.sort_values("timestamp_ms", kind="stable")
        v = g[sig].to_numpy(dtype=float)
        if len(v) <= n_seq:
            continue
        f = flags[samples.index.get_indexer(g.index)]
        ts = g["timestamp_ms"].to_numpy(np.int64)
        ti = np.arange(n_seq, len(v), cfg.sequence_stride)
        # gaps stay gaps: a window whose samples are not evenly spaced (missing rows) is skipped
        step = np.median(np.diff(ts)) if len(ts) > 1 else 0
        ti = ti[(ts[ti] - ts[ti - n_seq]) <= n_seq * step * 1.5]
        win = np.lib.stride_tricks.sliding_window_view(v, n_seq + 1)[ti - n_seq]
        fwin = np.lib.stride_tricks.sliding_window_view(f, n_seq + 1)[ti - n_seq]
        atype = g["anomaly_type"].to_numpy(dtype=object)[ti]
        is_anom = f[ti]
        parts.append(
            pd.DataFrame(
                {
                    "endpoint_id": str(ep),
                    "metric_type": metric,
                    "timestamp_ms": g["timestamp_ms"].to_numpy(np.int64)[ti],
                    "sequence": list(win[:, :n_seq].copy()),
                    "target": win[:, n_seq],
                    "is_anomaly": is_anom,
                    "anomaly_type": pd.array(np.where(is_anom, atype, None), dtype="string"),
                    "window_anomalous": fwin.any(axis=1),
                }
            )
        )
    if not parts:
        return _empty_timeseries()
    return pd.concat(parts, ignore_index=True)


def _empty_timeseries() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "endpoint_id": pd.Series(dtype=object),
            "metric_type": pd.Series(dtype=object),
            "timestamp_ms": pd.Series(dtype="int64"),
            "sequence": pd.Series(dtype=object),
            "target": pd.Series(dtype=float),
            "is_anomaly": pd.Series(dtype=bool),
            "anomaly_type": pd.Series(dtype="string"),
            "window_anomalous": pd.Series(dtype=bool),
        }
    )


def timeseries_splits(
    samples: pd.DataFrame, incidents: pd.DataFrame, endpoints: pd.DataFrame, cfg: SplitConfig
) -> dict[str, pd.DataFrame]:
    """{train, val, test}: TCN rows for every metric type, stacked (``metric_type`` tells them apart)."""
    caps = endpoint_capabilities(endpoints)
    split = split_labels(samples, cfg)
    out = {}
    for which in SPLITS:
        frames = [timeseries_rows(samples, incidents, split, which, m, cfg, caps) for m in METRIC_TYPES]
        out[which] = pd.concat(frames, ignore_index=True)
    return out


def endpoint_capabilities(endpoints: pd.DataFrame) -> dict[str, set[str]]:
    return {str(r.endpoint_id): set(str(r.capabilities).split("+")) for r in endpoints.itertuples()}


def reference_stats(samples: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Mean and std per (endpoint, signal) over healthy *training* samples, plus pooled rows ('*')."""
    split = split_labels(samples, cfg)
    train = samples[(split == "train") & ~samples["is_anomaly"].to_numpy()]
    ref = ReferenceStats.fit(
        train["endpoint_id"].to_numpy(), {s: train[s].to_numpy(dtype=float) for s in VALUE_SIGNALS}, np.ones(len(train), bool)
    )
    counts = {}
    for s in VALUE_SIGNALS:
        ok = np.isfinite(train[s].to_numpy(dtype=float))
        counts.update({(str(ep), s): int(n) for ep, n in train.loc[ok, "endpoint_id"].value_counts().items()})
        counts[("*", s)] = int(ok.sum())
    rows = ref.to_records()
    for r in rows:
        r["n"] = counts[(r["endpoint_id"], r["signal"])]
    df = pd.DataFrame(rows, columns=["endpoint_id", "signal", "mean", "std", "n"])
    df["n"] = df["n"].astype("int64")
    return df


def multivariate_splits(
    samples: pd.DataFrame, endpoints: pd.DataFrame, reference: pd.DataFrame, cfg: SplitConfig
) -> dict[str, pd.DataFrame]:
    """{train, val, test}: feature vectors from the shared engine, every ``feature_stride`` samples.

    Features are computed over each endpoint's full series (as a live detector would see it),
    then a row is kept only where its whole window lies inside one split. Labels describe the
    newest sample of the window (what a detector should say at that moment).
    """
    caps = endpoint_capabilities(endpoints)
    ref = ReferenceStats.from_records(reference.to_dict("records"))
    fcfg = cfg.feature_config
    feats = features_frame(samples, ref, caps, fcfg)  # sorted by (endpoint, time), original index
    split = pd.Series(split_labels(samples, cfg), index=samples.index).loc[feats.index].to_numpy()
    w = fcfg.window
    keep = np.zeros(len(feats), dtype=bool)
    win_anom = np.zeros(len(feats), dtype=bool)
    anom_all = samples.loc[feats.index, "is_anomaly"].to_numpy()
    start = 0
    for _, n in feats.groupby("endpoint_id", sort=False).size().items():
        sl = slice(start, start + n)
        sp = split[sl]
        an = anom_all[sl].astype(float)
        pos = np.arange(n)
        # window [t-w+1, t] in one split <=> same split label at both ends (splits are contiguous)
        same = np.zeros(n, dtype=bool)
        same[w - 1 :] = sp[w - 1 :] == sp[: n - w + 1]
        k = same & (sp != "gap") & (pos % cfg.feature_stride == (w - 1) % cfg.feature_stride)
        keep[sl] = k
        csum = np.concatenate([[0.0], np.cumsum(an)])
        lo = np.maximum(pos - w + 1, 0)
        win_anom[sl] = (csum[pos + 1] - csum[lo]) > 0
        start += n
    base = feats.loc[keep].copy()
    src = samples.loc[base.index]
    base.insert(2, "capabilities", [("+".join(sorted(caps[e]))) for e in base["endpoint_id"]])
    base["is_anomaly"] = src["is_anomaly"].to_numpy()
    base["anomaly_type"] = src["anomaly_type"].astype("string").to_numpy()
    base["window_anomalous"] = win_anom[keep]
    base["timestamp_ms"] = base["timestamp_ms"].astype("int64")
    sp_keep = split[keep]
    return {which: base[sp_keep == which].reset_index(drop=True) for which in SPLITS}


def healthy_stream_features(
    samples: pd.DataFrame, endpoints: pd.DataFrame, reference: pd.DataFrame, cfg: SplitConfig, split: str = "val"
) -> pd.DataFrame:
    """Feature vectors of *every* healthy sample of one split (no stride), as a live detector
    scores them: the alert-level calibration needs the score series at full rate, because an
    alert is a level held for the persistence span and a strided table cannot show one.

    Features come from the split's own samples (splits are contiguous per endpoint; the first
    ``feature_window - 1`` samples of each endpoint, partial windows, are left out). Healthy: no
    anomalous sample in the window. Columns: ``endpoint_id``, ``timestamp_ms``,
    ``capabilities`` and the features."""
    caps = endpoint_capabilities(endpoints)
    ref = ReferenceStats.from_records(reference.to_dict("records"))
    fcfg = cfg.feature_config
    sub = samples[split_labels(samples, cfg) == split]
    if sub.empty:
        return pd.DataFrame(columns=["endpoint_id", "timestamp_ms", "capabilities"])
    feats = features_frame(sub, ref, caps, fcfg)
    w = fcfg.window
    anom = sub.loc[feats.index, "is_anomaly"].to_numpy(dtype=float)
    keep = np.zeros(len(feats), dtype=bool)
    start = 0
    for _, n in feats.groupby("endpoint_id", sort=False).size().items():
        pos = np.arange(n)
        csum = np.concatenate([[0.0], np.cumsum(anom[start : start + n])])
        lo = np.maximum(pos - w + 1, 0)
        keep[start : start + n] = (pos >= w - 1) & ((csum[pos + 1] - csum[lo]) == 0)
        start += n
    out = feats.loc[keep].reset_index(drop=True)
    out.insert(2, "capabilities", ["+".join(sorted(caps[e])) for e in out["endpoint_id"]])
    out["timestamp_ms"] = out["timestamp_ms"].astype("int64")
    return out


def sample_splits(samples: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """{train, val, test}: the raw samples of each split (gap samples left out), for stream replay."""
    split = split_labels(samples, cfg)
    return {which: samples[split == which].reset_index(drop=True) for which in SPLITS}
