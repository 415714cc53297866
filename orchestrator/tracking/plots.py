"""The comparison's PNG plots: metric curves per run, a rank x kernel heatmap per backbone/variant,
and the metric against trainable parameters."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt  # noqa: E402


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def curves(c, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in c.rows:
        if r.curve:
            steps, values = zip(*r.curve)
            ax.plot(steps, values, marker="o", markersize=3, label=f"{r.label} r{r.rank}"
                    + (f" k{r.kernel_size}" if r.kernel_size else "") + f" ({r.run_name[-8:]})")
    ax.set_xlabel("step")
    ax.set_ylabel(c.metric)
    ax.set_title(f"{c.metric} per run")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap(c, backbone: str, label: str, path: Path) -> None:
    """Best value per (rank, kernel) cell of one backbone/variant (kernel '–' for variants without a conv)."""
    rows = [r for r in c.rows if r.backbone == backbone and r.label == label and r.value is not None]
    ranks = sorted({r.rank for r in rows if r.rank is not None})
    kernels = sorted({r.kernel_size for r in rows if r.kernel_size is not None}) or [None]
    best: dict[tuple, float] = {}
    pick = min if c.mode == "min" else max
    for r in rows:
        key = (r.rank, r.kernel_size)
        best[key] = pick(best.get(key, r.value), r.value)
    grid = [[best.get((rank, k), float("nan")) for k in kernels] for rank in ranks]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(kernels), 1.4 + 0.6 * len(ranks)))
    im = ax.imshow(grid, cmap="viridis_r" if c.mode == "min" else "viridis", aspect="auto")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(kernels)), [str(k) if k else "–" for k in kernels])
    ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
    ax.set_xlabel("kernel size")
    ax.set_ylabel("rank")
    ax.set_title(f"{backbone} {label}: {c.metric}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_vs_params(c, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    labels = sorted({r.label for r in c.rows})
    groups = [g for g in c.groups() if g.interval.n > 1 and g.first.trainable_parameters]
    for i, label in enumerate(labels):
        color = f"C{i}"
        pts = [(r.trainable_parameters, r.value) for r in c.rows
               if r.label == label and r.value is not None and r.trainable_parameters]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, label=label, color=color, alpha=0.35 if groups else 1.0)
        mine = [g for g in groups if g.first.label == label]  # configurations over seeds: mean and 95% CI
        if mine:
            ax.errorbar([g.first.trainable_parameters for g in mine], [g.interval.mean for g in mine],
                        yerr=[g.interval.half_width for g in mine], fmt="o", color=color, capsize=4, markersize=7,
                        label=f"{label}: mean ± 95% CI over seeds")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(c.metric)
    ax.set_title(f"{c.metric} vs trainable parameters")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no run with a value and parameter count: nothing to label
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(c, out: Path) -> dict[str, str]:
    """-> {title: file name} of the PNGs written into ``out``."""
    plots = {f"{c.metric} per run": "curves.png", f"{c.metric} vs trainable parameters": "metric_vs_params.png"}
    curves(c, out / "curves.png")
    metric_vs_params(c, out / "metric_vs_params.png")
    for backbone, label in sorted({(r.backbone, r.label) for r in c.rows if r.value is not None and r.rank}):
        name = f"heatmap_{_slug(backbone)}_{_slug(label)}.png"
        heatmap(c, backbone, label, out / name)
        plots[f"{backbone} {label}: rank x kernel"] = name
    return plots
