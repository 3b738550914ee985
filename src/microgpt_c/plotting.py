"""Loss plots: :func:`save_loss_plot`, and :func:`check_plot_target` to check
before training that a plot can be written.  matplotlib is optional (the
``[plot]`` extra) and imported only here, only when a plot is asked for."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Tuple, Optional, Sequence

from .checkpoint import atomic_write_bytes
from .config import PathArg
from .errors import ConfigError, OptionalDependencyError

__all__ = ["check_plot_target", "save_loss_plot"]

_PLOT_HINT = ("install it with: pip install matplotlib (or, from a checkout of microgpt_c: "
              "pip install '.[plot]')")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionalDependencyError(f"plotting needs matplotlib, which is not installed; "
                                      f"{_PLOT_HINT}") from None
    return Figure, FigureCanvasAgg


def check_plot_target(path: PathArg) -> Path:
    """Check, before training, that a loss plot can be written to ``path``:
    matplotlib is installed, the format (from the suffix) is supported and the
    directory exists.  Returns the path."""
    path = Path(os.fspath(path))
    Figure, FigureCanvasAgg = _matplotlib()
    fmt = path.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"cannot save a plot as {path.name!r}: use one of the suffixes "
                          f"{', '.join('.' + s for s in sorted(supported))}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot save the plot to {path}: directory {parent} does not exist")
    return path


def save_loss_plot(losses: Sequence[float], path: PathArg, window: Optional[int] = None,
                   title: Optional[str] = None,
                   val_losses: Optional[Sequence[Tuple[int, float]]] = None) -> Path:
    """Save the loss curve (per-step loss and its moving average over
    ``window`` steps, default ~1/20 of the run) to ``path`` (atomically); the
    format follows the suffix (.png, .svg, .pdf, ...).  Needs matplotlib."""
    import numpy as np

    path = check_plot_target(path)
    Figure, FigureCanvasAgg = _matplotlib()
    y = np.asarray(losses, dtype=np.float64)
    n = len(y)
    if window is None:
        window = max(1, min(200, n // 20))
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.arange(1, n + 1)
    ax.plot(steps, y, lw=0.6, alpha=0.35, color="tab:blue", label="loss")
    if n >= window > 1:
        c = np.cumsum(np.insert(y, 0, 0.0))
        ma = (c[window:] - c[:-window]) / window
        ax.plot(steps[window - 1:], ma, lw=1.8, color="tab:orange",
                label=f"moving average ({window} steps)")
    if val_losses:
        ax.plot([a for a, _ in val_losses], [b for _, b in val_losses], "o-", lw=1.5,
                ms=4, color="tab:green", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or f"microgpt_c training loss ({n} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower(), dpi=120)
    return atomic_write_bytes(path, buf.getvalue())
