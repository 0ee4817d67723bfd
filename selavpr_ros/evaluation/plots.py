"""Figures for evaluation reports (PNG via matplotlib's Agg canvas; no global pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from selavpr_ros.errors import SelaVPRError


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SelaVPRError("report figures need matplotlib: pip install selavpr_ros[eval]") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def _rgb(image: np.ndarray | str | Path) -> np.ndarray:
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(image)


def plot_recall_curves(recalls: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "") -> Path:
    """Recall@N per retrieval stage (one line each)."""
    if not recalls:
        raise ValueError("no recall values to plot")
    fig = _figure(5, 3.5)
    ax = fig.add_subplot()
    for stage, values in recalls.items():
        ns = sorted(values)
        ax.plot(ns, [values[n] for n in ns], marker="o", label=stage)
    ns = sorted({n for v in recalls.values() for n in v})
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(0, 100)
    ax.set_xlabel("N")
    ax.set_ylabel("Recall@N (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def plot_pr_curves(curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Precision against recall of each stage's top-1 claims (``PRCurve.to_dict`` entries)."""
    if not curves:
        raise ValueError("no precision-recall curves to plot")
    fig = _figure(5, 3.5)
    ax = fig.add_subplot()
    for stage, c in curves.items():
        recall = [0.0, *c["recall"]]
        precision = [c["precision"][0] if c["precision"] else 1.0, *c["precision"]]
        ax.step(recall, precision, where="post",
                label=f"{stage} (AUC {c['auc_pr']:.2f}, R@100%P {100 * c['recall_at_100_precision']:.1f} %)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def plot_latency_vs_map_size(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Per-query latency (ms) against map size, one line per stage (log-log): the median, and the
    10th-90th percentile band where the rows carry it."""
    if not rows:
        raise ValueError("no latency rows to plot")
    fig = _figure(5, 3.5)
    ax = fig.add_subplot()
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = sorted((r["map_size"], r["ms"], r.get("p10_ms"), r.get("p90_ms")) for r in rows if r["stage"] == stage)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{stage} (median)")
        if all(p[2] is not None and p[3] is not None for p in pts):
            ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("map entries")
    ax.set_ylabel("ms per query")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def plot_top_matches(query, candidates: Sequence, correct: Sequence[bool], path: str | Path,
                     scores: Sequence[float] | None = None, title: str = "") -> Path:
    """The query and its top-k retrievals, framed green (correct) or red (wrong)."""
    if len(candidates) != len(correct) or (scores is not None and len(scores) != len(candidates)):
        raise ValueError(f"{len(candidates)} candidates, {len(correct)} labels"
                         + ("" if scores is None else f", {len(scores)} scores"))
    if not candidates:
        raise ValueError("no candidates to show")
    k = len(candidates)
    fig = _figure(2.2 * (k + 1), 2.0)
    axes = fig.subplots(1, k + 1)
    for ax, image, label, colour in [(axes[0], query, "query", "black")] + [
        (axes[i + 1], c, f"#{i + 1}" + (f" {scores[i]:.3f}" if scores is not None else ""),
         "#1a9641" if correct[i] else "#d7191c") for i, c in enumerate(candidates)
    ]:
        ax.imshow(_rgb(image))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4 if colour != "black" else 1)
        ax.set_title(label, fontsize=9, color=colour)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_local_matches(image_a, image_b, points_a: np.ndarray, points_b: np.ndarray, path: str | Path,
                       max_lines: int = 200, title: str = "") -> Path:
    """Two images side by side (same height) with a line per mutual-nearest-neighbour match."""
    points_a, points_b = np.asarray(points_a, float), np.asarray(points_b, float)
    if points_a.shape != points_b.shape or points_a.ndim != 2 or points_a.shape[1] != 2:
        raise ValueError(f"points must be two (M, 2) arrays of one size, got {points_a.shape} and {points_b.shape}")
    if not (np.isfinite(points_a).all() and np.isfinite(points_b).all()):
        raise ValueError("points must be finite")
    a, b = _rgb(image_a), _rgb(image_b)
    scale = a.shape[0] / b.shape[0]
    b = np.asarray(Image.fromarray(b).resize((max(1, round(b.shape[1] * scale)), a.shape[0])))
    canvas = np.concatenate([a, b], axis=1)
    keep = np.linspace(0, len(points_a) - 1, min(max_lines, len(points_a))).round().astype(int) if len(points_a) \
        else np.zeros(0, int)
    fig = _figure(canvas.shape[1] / 40 + 1, canvas.shape[0] / 40 + 0.6)
    ax = fig.add_subplot()
    ax.imshow(canvas)
    colours = np.linspace(0, 1, max(len(keep), 1))
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for c, i in zip(colours, keep):
        xa, ya = points_a[i]
        xb, yb = points_b[i] * scale + [a.shape[1], 0]
        ax.plot([xa, xb], [ya, yb], color=cmap(c), linewidth=0.8)
    ax.set_axis_off()
    ax.set_title(title or f"{len(points_a)} mutual nearest neighbours", fontsize=9)
    return _save(fig, path)
