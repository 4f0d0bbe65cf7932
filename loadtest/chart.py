#!/usr/bin/env python3
"""Bar charts from the benchmark harness's results.csv (BENCH_SH; see docs/performance.md).

    python3 loadtest/chart.py RESULTS.csv OUT.png

Five panels, one bar per proxy (median of the runs; the whisker spans min..max when there are
several runs): requests/s for h1, h1tls, h2tls; p99 at the fixed 5,000 req/s (h1rate, h2rate);
TLS handshakes (hs: new connections/s with resumed sessions; hsfull: full handshakes, shown as
proxy CPU per handshake since that test is bound by its client); proxy CPU ms per 10k requests.
Tests absent from the CSV are left out. Needs matplotlib (pip install matplotlib).
"""
import csv
import math
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"custom": "tenant-gateway", "nginx1": "nginx (1 worker)", "haproxy1": "HAProxy (1 thread)",
          "nginxauto": "nginx (auto)", "haproxy2": "HAProxy (2 threads)", "term1": "nginx, no hop (ceiling)",
          "direct": "upstream direct", "pingora1": "Pingora (1 thread)", "pingora2": "Pingora (2 threads)"}


def load(path):
    rows = list(csv.DictReader(open(path)))
    data = {}
    for r in rows:
        data.setdefault((r["cand"], r["test"]), []).append(r)
    cands = list(dict.fromkeys(r["cand"] for r in rows))
    return data, cands


def values(data, cand, test, key, scale=1.0):
    out = []
    for r in data.get((cand, test), []):
        try:
            v = float(r[key])
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            out.append(v * scale)
    return out


def panel(ax, data, cands, tests, key, title, ylabel, scale=1.0, fmt="{:,.0f}"):
    tests = [t for t in tests if any((c, t) in data for c in cands)]
    if not tests:
        ax.set_visible(False)
        return
    width = 0.8 / max(len(cands), 1)
    for i, c in enumerate(cands):
        xs, meds, lo, hi = [], [], [], []
        for j, t in enumerate(tests):
            v = values(data, c, t, key, scale)
            if not v:
                continue
            m = statistics.median(v)
            xs.append(j + (i - (len(cands) - 1) / 2) * width)
            meds.append(m)
            lo.append(m - min(v))
            hi.append(max(v) - m)
        if not xs:
            continue
        bars = ax.bar(xs, meds, width * 0.95, label=LABELS.get(c, c),
                      yerr=[lo, hi] if any(lo) or any(hi) else None, capsize=3)
        for b, m in zip(bars, meds):
            ax.annotate(fmt.format(m), (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(tests)))
    ax.set_xticklabels(tests)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data, cands = load(sys.argv[1])
    reps = max((len(v) for v in data.values()), default=0)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panel(axes[0][0], data, cands, ["h1", "h1tls", "h2tls"], "rps",
          "requests/s, 64 connections / streams\n(higher is better)", "req/s")
    panel(axes[0][1], data, cands, ["h1rate", "h2rate"], "p99_ms",
          "p99 latency at a fixed 5,000 req/s\n(lower is better)", "ms", fmt="{:.2f}")
    panel(axes[0][2], data, cands, ["h1", "h1tls", "h2tls", "h1rate", "h2rate"], "cpu_ms_per_10k",
          "proxy CPU ms per 10k requests\n(lower is better)", "ms", fmt="{:.0f}")
    panel(axes[1][0], data, cands, ["hs"], "rps",
          "new TLS connections/s, resumed sessions\n(higher is better)", "handshakes/s")
    # ms per 10k requests * 0.1 = us per request; hsfull sends one request per full handshake
    panel(axes[1][1], data, cands, ["hsfull"], "cpu_ms_per_10k",
          "proxy CPU per full TLS 1.3 handshake\n(lower is better; the test is client-bound)", "µs",
          scale=0.1, fmt="{:.0f}")
    axes[1][2].axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[1][2].legend(handles, labels, loc="center", frameon=False, fontsize=11,
                      title=f"loopback, proxy pinned to one core\nmedians of {reps} run(s); whiskers: min..max")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
