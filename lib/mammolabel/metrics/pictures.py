"""Pictures a person looks at: overlays of results on the film, ROC curves, reliability diagrams."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from mammolabel.io import atomic_path, write_png

#: RGB colours of labelmap values 1, 2, 3...
PALETTE = np.array([[255, 64, 64], [64, 160, 255], [255, 200, 0], [64, 220, 64], [200, 64, 255], [0, 220, 220]])


def overlay(
    pixels: np.ndarray,
    labelmap: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    points: Sequence[Sequence[float]] = (),
    max_size: int = 768,
    alpha: float = 0.35,
) -> np.ndarray:
    """RGB uint8 picture: film in grey, labels tinted, truth outlined in green, points as white crosses."""
    rgb = np.repeat((np.clip(pixels, 0, 1) * 255)[..., None], 3, axis=2).astype(np.float32)
    if labelmap is not None:
        for value in np.unique(labelmap[labelmap > 0]):
            colour = PALETTE[(int(value) - 1) % len(PALETTE)]
            sel = labelmap == value
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
            edge = sel & ~ndimage.binary_erosion(sel)
            rgb[edge] = colour
    if truth is not None:
        t = truth > 0
        edge = ndimage.binary_dilation(t & ~ndimage.binary_erosion(t))
        rgb[edge] = (0, 255, 0)
    arm = max(3, max(pixels.shape) // 100)
    for x, y in ((int(round(p[0])), int(round(p[1]))) for p in points):
        rgb[max(0, y - arm) : y + arm + 1, max(0, x - 1) : x + 2] = 255
        rgb[max(0, y - 1) : y + 2, max(0, x - arm) : x + arm + 1] = 255
    step = max(1, int(np.ceil(max(pixels.shape) / max_size)))
    return rgb[::step, ::step].astype(np.uint8)


def save_overlay(path: str | os.PathLike, pixels: np.ndarray, **kwargs) -> Path:
    return write_png(path, overlay(pixels, **kwargs))


def save_roc(path: str | os.PathLike, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> Path:
    """ROC plot with one curve per entry ``name: (fpr, tpr, auc)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (fpr, tpr, value) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {value:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG in one atomic rename and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def save_reliability(path: str | os.PathLike, curves: dict[str, np.ndarray], truth: np.ndarray, title: str,
                     bins: int = 10) -> Path:
    """Reliability diagram: the share of positive images against the mean probability, in equal-width bins,
    one curve per entry ``name: probabilities`` (with its Brier score), and the diagonal of a calibrated one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(truth, float)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, p in curves.items():
        p = np.asarray(p, float)
        index = np.minimum((p * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (index == b).any()]
        ax.plot([p[index == b].mean() for b in used], [truth[index == b].mean() for b in used], marker="o",
                label=f"{name} (Brier {np.mean((p - truth) ** 2):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="mean probability in bin", ylabel="share of positive images", title=title, xlim=(0, 1),
           ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def save_learning_curves(path: str | os.PathLike, runs: dict[str, tuple[list[dict[str, float]], str]],
                         title: str) -> Path:
    """Training loss (left) and the validation metric (right) per epoch, one line per run (fold and stage;
    ``runs[name] = (history, metric)``): a loss that keeps falling while the validation figure does not
    rise is overfitting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, (history, metric) in runs.items():
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h.get("loss") for h in history], marker=".", label=name)
        metric_ax.plot(epochs, [h.get(metric) for h in history], marker=".", label=f"{name}: {metric}")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training")
    metric_ax.set(xlabel="epoch", ylabel="validation metric", title="validation (inside the training folds)")
    metric_ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
