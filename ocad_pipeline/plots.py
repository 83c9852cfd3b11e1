"""Small matplotlib helpers that turn figures into markdown for Dagster metadata."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ocad_detectors.signals import SIGNALS, VALUE_SIGNALS  # noqa: E402

TYPE_COLORS = {
    "spike": "tab:red", "drift": "tab:orange", "loss": "tab:purple", "concurrent": "tab:brown", "correlated": "tab:pink",
    "burst": "tab:red", "step": "tab:olive", "intermittent_loss": "tab:purple", "single_signal": "tab:cyan", "jitter": "tab:green",
}


def figure_markdown(fig, alt: str = "plot") -> str:
    """PNG-encode a figure into a markdown image (shown inline by the Dagster UI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def series_with_incidents(samples: pd.DataFrame, incidents: pd.DataFrame, endpoint_id: str):
    """One endpoint's value signals over time, each incident shaded by type (outages hatched)."""
    g = samples[samples["endpoint_id"] == endpoint_id].sort_values("timestamp_ms")
    sigs = [s for s in VALUE_SIGNALS if g[s].notna().any()]
    fig, axes = plt.subplots(len(sigs), 1, figsize=(11, 2.2 * len(sigs)), sharex=True, squeeze=False)
    t = pd.to_datetime(g["timestamp_ms"], unit="ms", utc=True)
    inc = incidents[incidents["endpoint_id"] == endpoint_id]
    for ax, s in zip(axes[:, 0], sigs):
        ax.plot(t, g[s], lw=0.6, color="tab:blue")
        ax.set_ylabel(f"{s}\n[{SIGNALS[s].unit}]", fontsize=8)
        for r in inc.itertuples():
            a = pd.to_datetime(r.start, unit="ms", utc=True)
            b = pd.to_datetime(r.end, unit="ms", utc=True)
            ax.axvspan(a, b, color=TYPE_COLORS.get(str(r.type), "grey"), alpha=0.25, lw=0)
            if pd.notna(r.outage_start):
                ax.axvspan(pd.to_datetime(r.outage_start, unit="ms", utc=True), b, fill=False, hatch="//", lw=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.4) for c in TYPE_COLORS.values()]
    axes[0, 0].legend(handles, list(TYPE_COLORS), ncol=5, fontsize=7, loc="upper left")
    axes[0, 0].set_title(f"{endpoint_id}: signals with incidents shaded (hatched = outage)", fontsize=9)
    return fig
