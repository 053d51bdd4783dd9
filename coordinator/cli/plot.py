"""`gradmesh plot ID [ID ...] -o curves.png`: the dashboard's curves for reports, one colour per job.

Five panels against step, each job on the same axes: training loss, validation loss, validation accuracy,
learning rate and samples/s (the quantities of the dashboard's job page). matplotlib is an optional extra
(`pip install -e '.[plot]'` in the gradmesh clone); without it the command says so in one line and exits 1.

    draw_curves({"digits-1": points, "digits-2": points}, Path("curves.png"))   # points: client MetricPoints
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from coordinator.cli.commands import EXIT_OK, CliError, make_client

FIGSIZE = (15.0, 8.0)  # inches; at DPI this is a 1500 x 800 image
DPI = 100
PANELS = (("train_loss", "training loss", True), ("val_loss", "validation loss", True),
          ("val_accuracy", "validation accuracy", False), ("lr", "learning rate", False),
          ("samples_per_second", "samples / s", False))


def _figure_class():
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot, no GUI backend, no global state
    except ImportError:
        raise CliError("gradmesh plot needs matplotlib, which is not installed: pip install -e '.[plot]' in "
                       "the gradmesh clone (or pip install matplotlib)") from None
    return Figure


def draw_curves(curves: Mapping[str, Sequence[Any]], output: Path) -> Path:
    """Draw each job's points (objects with the MetricPoint attributes; None or NaN = not measured) and save
    the figure to `output` (its suffix picks the format)."""
    figure = _figure_class()(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots(2, 3, sharex=True).flat
    for ax, (attr, title, log_scale) in zip(axes, PANELS):
        positive = True
        for job_id, points in curves.items():
            xy = [(p.step, getattr(p, attr)) for p in points
                  if getattr(p, attr) is not None and not math.isnan(getattr(p, attr))]
            positive = positive and all(y > 0 for _, y in xy)
            ax.plot([x for x, _ in xy], [y for _, y in xy], label=job_id, linewidth=1.4,
                    marker="." if len(xy) < 40 else None)
        if log_scale and positive:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.tick_params(labelbottom=True)  # shared x axes hide inner tick labels; every panel stands alone
        ax.grid(True, alpha=0.3)
    legend = axes[len(PANELS)] if len(PANELS) < 6 else None
    if legend is not None:  # the sixth cell holds the legend: which colour is which job
        legend.axis("off")
        handles, labels = figure.axes[0].get_legend_handles_labels()
        legend.legend(handles, labels, loc="center", title="job", frameon=False)
    output = Path(output)
    figure.savefig(output, dpi=DPI)
    return output


def cmd_plot(args) -> int:
    _figure_class()  # the missing extra is said before any call to the coordinator
    with make_client(args) as client:
        curves = {job_id: client.metrics(job_id) for job_id in dict.fromkeys(args.job_ids)}
    empty = [job_id for job_id, points in curves.items() if not points]
    if len(empty) == len(curves):
        raise CliError(f"no metric points yet for {', '.join(empty)}: nothing to plot")
    path = draw_curves(curves, Path(args.output))
    note = f" ({', '.join(empty)} had no points yet)" if empty else ""
    print(f"wrote {path}: {len(curves)} job(s), {sum(map(len, curves.values()))} points{note}")
    return EXIT_OK
