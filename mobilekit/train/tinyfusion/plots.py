"""PNG of the learnable search's decision dynamics (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobilekit._io import write_bytes_atomic


def plot_decisions(log: Sequence[dict[str, Any]], dest: Path, *, title: str = "TinyFusion decision dynamics") -> Path:
    """Draw, per group, the EMA gate's top probability and which candidate leads, over steps.

    Args:
        log: decision log entries of :func:`~mobilekit.train.tinyfusion.search.learn_mask`.
        dest: PNG path (written atomically).
        title: figure title.

    Returns:
        ``dest``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    ax_conf, ax_kept = fig.subplots(2, 1, sharex=True)
    steps = [e["step"] for e in log]
    n_groups = len(log[0]["confidence"]) if log else 0
    for g in range(n_groups):
        ax_conf.plot(steps, [e["confidence"][g] for e in log], label=f"group {g}")
    ax_conf.set_ylabel("confidence (max p)")
    ax_conf.set_ylim(0, 1.05)
    if n_groups <= 12:
        ax_conf.legend(fontsize=6, ncol=4)
    depth_kept = len(log[0]["decision"]) if log else 0
    for e in log:
        ax_kept.scatter([e["step"]] * depth_kept, e["decision"], s=6, c="tab:blue")
    ax_kept.set_ylabel("kept layer index")
    ax_kept.set_xlabel("optimizer step")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(Path(dest), buf.getvalue())
