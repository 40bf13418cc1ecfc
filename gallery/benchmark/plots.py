"""PNG plots of a benchmark report (matplotlib's object API with the Agg canvas: no pyplot, no display).

Every curve, bar or title made from random weights carries "random weights" in its label.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gallery.calibration import metrics as bm

log = logging.getLogger(__name__)

RANDOM = "random weights"
UNMEASURED_FAR = 1e-3  # score histograms say when this FAR cannot be measured on their impostor count
FPIR_FLOOR = 0.1  # percent: where an FPIR of 0 is drawn on the open-set plot's log axis


def _figure(w: float = 6.4, h: float = 4.8) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _label(model: str, random: bool) -> str:
    return f"{model} ({RANDOM})" if random else model


def roc_plot(curves: list[tuple[str, bool, np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """All embedders on one chart: (model, random, genuine, impostor) per curve; FAR on a log axis."""
    fig = _figure()
    ax = fig.add_subplot()
    for model, random, gen, imp in curves:
        far, tar = bm.roc(gen, imp)
        shown = far > 0  # a log axis has no 0: the curve starts at one accepted impostor (FAR = 1 / impostors)
        ax.plot(far[shown], tar[shown], label=f"{_label(model, random)}  AUC {bm.auc(gen, imp):.4f}",
                linestyle="--" if random else "-", drawstyle="steps-post")
    ax.plot([1e-4, 1], [1e-4, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log scale)")
    ax.set_ylabel("true accept rate")
    ax.set_title(title + (f" ({RANDOM} present)" if any(c[1] for c in curves) else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def score_histogram(model: str, random: bool, gen: np.ndarray, imp: np.ndarray,
                    thresholds: list[tuple[str, float]], title: str, path: Path) -> Path:
    """Genuine and impostor similarity histograms with each threshold marked by a vertical line."""
    fig = _figure()
    ax = fig.add_subplot()
    lo, hi = float(min(gen.min(), imp.min())), float(max(gen.max(), imp.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 60)
    ax.hist(imp, bins=bins, alpha=0.55, density=True, color="tab:red", label=f"impostor (n={len(imp)})")
    ax.hist(gen, bins=bins, alpha=0.55, density=True, color="tab:green", label=f"genuine (n={len(gen)})")
    for (name, t), style in zip(thresholds, ("-", "--", ":", "-.")):
        ax.axvline(t, color="black", linestyle=style, linewidth=1.2, label=f"{name} = {t:.3f}")
    if not bm.far_is_measurable(len(imp), UNMEASURED_FAR):
        ax.text(0.02, 0.97, f"FAR {UNMEASURED_FAR:g} cannot be measured on {len(imp)} impostor scores "
                f"(needs {int(round(1 / UNMEASURED_FAR))}):\na threshold for it lies just above the best impostor",
                transform=ax.transAxes, va="top", fontsize=7, color="tab:red")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"{_label(model, random)}: {title}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(model: str, random: bool, augment: int, history: dict, best_epoch: int, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train loss")
    ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.axvline(best_epoch + 1, color="grey", linestyle=":", label=f"best epoch {best_epoch + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    acc = np.asarray(history["val_accuracy"], float)
    if np.isfinite(acc).any():
        ax2 = ax.twinx()
        ax2.plot(epochs, acc, color="tab:green", alpha=0.7, label="validation accuracy")
        ax2.set_ylim(0, 1.01)
        ax2.set_ylabel("validation accuracy (held-out photos)")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{_label(model, random)} head, augment {augment}")
    return _save(fig, path)


def confusion_plot(model: str, random: bool, method: str, labels: list[str], matrix: np.ndarray,
                   path: Path) -> Path:
    n = len(labels)
    size = min(12.0, 3.0 + 0.35 * n)
    fig = _figure(size, size)
    ax = fig.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{_label(model, random)}: {method} (rows normalised)")
    return _save(fig, path)


def open_set_plot(rows: dict[str, list], target_fpir: float, path: Path, random: dict[str, bool]) -> Path:
    """FPIR (left, log scale, 0 drawn at ``FPIR_FLOOR`` %) and TPIR (right) against gallery size, per embedder and
    threshold rule (default, calibrated, fixed): ``rows`` maps a model to its
    :class:`gallery.benchmark.open_set.SweepRow` list."""
    fig = _figure(11, 4.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    styles = {"default": "-", "calibrated": "--", "fixed": ":"}
    for model, sweep in rows.items():
        sizes = [r.size for r in sweep]
        for rule, style in styles.items():
            if not sweep or rule not in sweep[0].rules:
                continue
            label = f"{_label(model, random.get(model, False))}, {rule}"
            left.plot(sizes, [max(100 * r.rules[rule][1], FPIR_FLOOR) for r in sweep], style, marker="o",
                      label=label)
            right.plot(sizes, [100 * r.rules[rule][2] for r in sweep], style, marker="o", label=label)
    left.axhline(100 * target_fpir, color="grey", linewidth=0.8, label=f"target FPIR {target_fpir:g}")
    for ax, what in ((left, "FPIR: strangers named (%)"), (right, "TPIR: enrolled people named correctly (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("gallery size (people, log scale)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    left.set_yscale("log")
    left.set_ylim(FPIR_FLOOR, 100)
    fig.suptitle("Open-set identification against gallery size")
    return _save(fig, path)
