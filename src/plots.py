"""The figures of a sweep, as PNG + SVG (matplotlib here and in src.summary_plots only): the
paper's figures of a group of curves, the optimizer panels, the totals, and B beside the measured
B_simple.

The paper's figures (Smith, Kindermans, Ying & Le, ICLR 2018, arXiv 1711.00489), their captions:
  1  "Schedules for the learning rate (a) and batch size (b), as a function of training epochs."
  2  "Wide ResNet on CIFAR10. Training set cross-entropy, evaluated as a function of the number of
     training epochs (a), or the number of parameter updates (b). The three learning curves are
     identical, but increasing the batch size reduces the number of parameter updates required."
  3  "Wide ResNet on CIFAR10. Test accuracy during training, for SGD with momentum (a) and
     Nesterov momentum (b). In both cases all three schedules track each other extremely closely."
  4  "Wide ResNet on CIFAR10. Test set accuracy during training, for vanilla SGD (a) and Adam (b).
     Once again, all three schedules result in equivalent test set performance."
  5  "Wide ResNet on CIFAR10. Test accuracy as a function of the number of parameter updates.
     "Increasing batch size" replaces learning rate decay by batch size increases. "Increased
     initial learning rate" additionally increases the initial learning rate from 0.1 to 0.5.
     Finally "Increased momentum coefficient" also increases the momentum coefficient from 0.9
     to 0.98."
Per group: fig1_lr_batch_size, fig2a_train_loss_epochs, fig2b_train_loss_updates,
fig3_test_acc_epochs (figure 3a's axes for any optimizer) and fig5_test_acc_updates; when the sweep
varies the optimizer, figures 3 and 4 with one panel per optimizer. Figures 3-5 read the held-out
test split, as the paper's figures do. Extra figures keep their own names.

Epochs are 1-based on every axis: the x axis counts epochs trained, a per-epoch value (accuracy,
loss) is drawn at the end of its epoch (epoch k at x = k) and a setting (lr, B, g) of epoch k as
a step over [k - 1, k]; a milestone (the first epoch k whose lr, B or g differs from epoch k - 1's)
is marked at x = k - 1, where the step is.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from src.groups import Curve, Group, folder_name, optimizer_name, short_value
from src.schema import (
    BATCH_SIZE, GNS_B_SIMPLE, LR, NOISE_SCALE, SCHEDULE_COLORS, PARAM_UPDATES, TEST_ACC, TOTAL_PARAM_UPDATES,
    TRAIN_LOSS, TRAIN_TIME_S, VAL_LOSS, WALL_TIME_S,
)
from src.verdict import ReportRow, change_steps, minus_one_spread, series

# The optimizer panels of figures 3 and 4: optimizer (optimizer_name) -> panel title.
OPTIMIZER_FIGURES = {
    "fig3_test_acc_epochs_momentum_nesterov": ("Fig. 3: test accuracy vs epochs",
                                               {"momentum": "SGD with momentum", "nesterov": "Nesterov momentum"}),
    "fig4_test_acc_epochs_sgd_adam": ("Fig. 4: test accuracy vs epochs",
                                      {"sgd": "vanilla SGD", "adam": "Adam"}),
}
LINESTYLES = ("-", "--", ":", "-.")  # with colours, so curves that lie on each other stay visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # each curve's end, in every figure
DPI = 100  # of the PNGs: 640 x 480 pixels for one panel of 6.4 x 4.8 inches


def styles_for(schedules: Sequence[str]) -> dict[str, dict]:
    """schedule -> colour (schema.SCHEDULE_COLORS, as MLflow's UI shows the runs; else the next
    of matplotlib's cycle that none of these takes), line style and end marker, the same in every
    figure of a sweep."""
    taken = {SCHEDULE_COLORS[s] for s in schedules if s in SCHEDULE_COLORS}
    free = iter([c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c not in taken] * len(schedules))
    return {s: {"color": SCHEDULE_COLORS.get(s) or next(free), "linestyle": LINESTYLES[i % len(LINESTYLES)],
                "marker": MARKERS[i % len(MARKERS)]} for i, s in enumerate(schedules)}


def _label(curve: Curve) -> str:
    n = len(curve.finished)
    text = f"{curve.schedule} ({n} seed{'s' * (n != 1)}"
    return text + (f", {curve.n_failed} failed, left out)" if curve.n_failed else ")")


def new_figure(title: str, ncols: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.8), squeeze=False, layout="constrained")
    fig.suptitle(title)
    return fig, list(axes[0])


def _legend(fig: Figure, curves: Sequence[Curve], styles: dict, extra: Sequence[tuple] = (),
            bands: bool = False) -> None:
    """One legend under the axes (it never covers a curve); the band is explained only when the
    figure draws one (`bands`, and a curve with more than one seed)."""
    handles = [Line2D([], [], color=styles[c.schedule]["color"], linestyle=styles[c.schedule]["linestyle"],
                      marker=styles[c.schedule]["marker"]) for c in curves]
    labels = [_label(c) for c in curves]
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if bands and any(len(c.finished) > 1 for c in curves):
        handles.append(Patch(color="grey", alpha=0.25))
        labels.append("line: mean over seeds; band: min to max")
    columns = 2 if len(fig.axes) == 1 else 4  # what fits under one panel, or two
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, len(handles)), fontsize="small",
               frameon=False)


def _milestone_steps(curves: Sequence[Curve]) -> list[int]:
    return sorted({step for curve in curves for run in curve.finished for step in change_steps(run)})


MILESTONE_STYLE = {"color": "0.45", "linestyle": (0, (1, 3)), "linewidth": 1.0}
MILESTONE_HANDLE = (Line2D([], [], **MILESTONE_STYLE), "milestone: lr, B or g changes")
MILESTONE_POINT = {"marker": "|", "markersize": 11, "markeredgewidth": 1.6, "linestyle": "none"}
MILESTONE_TICK_HANDLE = (Line2D([], [], color="0.3", **MILESTONE_POINT), "milestone (the point before it)")


def _mark_milestones_epochs(ax, curves: Sequence[Curve]) -> bool:
    """Dotted lines where a phase starts: x = epochs trained before it."""
    steps = _milestone_steps(curves)
    for step in steps:
        ax.axvline(step, **MILESTONE_STYLE, zorder=0)
    return bool(steps)


def _epoch_axis(ax, curves: Sequence[Curve]) -> None:
    ax.set_xlabel("epochs trained (epoch k ends at k)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n = max(len(run.history[TRAIN_LOSS]) for c in curves for run in c.finished)
    ax.set_xlim(0, n)


def _label_ends(ax, ends: list[tuple[float, float, str, str]]) -> None:
    """Each curve's end point labelled in the right margin, labels pushed apart so none hides
    another; a thin leader line joins label and point."""
    ax.autoscale_view()
    to_axes = ax.transAxes.inverted()
    placed = sorted((to_axes.transform(ax.transData.transform((x, y)))[1], x, y, text, color)
                    for x, y, text, color in ends)
    gap = 0.075  # axes fraction between label centres (small font on a ~4 inch axes)
    positions = []
    for fraction, *_ in placed:
        positions.append(max(fraction, positions[-1] + gap) if positions else fraction)
    overflow = positions[-1] - 1.0 if positions else 0
    if overflow > 0:  # shift down, never below 0
        positions = [p - overflow for p in positions]
        for i in range(1, len(positions)):
            positions[i] = max(positions[i], positions[i - 1] + gap)
    for position, (_, x, y, text, color) in zip(positions, placed):
        ax.annotate(text, xy=(x, y), xycoords="data", xytext=(1.03, position), textcoords="axes fraction",
                    va="center", fontsize="small", color=color, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.6, "alpha": 0.5,
                                "linestyle": (0, (2, 2)), "shrinkA": 0, "shrinkB": 4})


def _curves(ax, curves: Sequence[Curve], styles: dict, y: str, x: str | None = None, y_scale: float = 1.0) -> None:
    """Mean over seeds of y against epochs trained (x None) or against the mean of metric x; a
    min-max band when a curve has more than one seed; each end marked and labelled with the
    curve's total updates; on an updates axis, each curve's milestones as ticks on it."""
    ends = []
    for curve in curves:
        runs, style = curve.finished, styles[curve.schedule]
        numbers = series(runs, y, x, y_scale)
        ax.plot(numbers["x"], numbers["mean"], color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
        if len(runs) > 1:
            ax.fill_between(numbers["x"], numbers["low"], numbers["high"], color=style["color"], alpha=0.2, linewidth=0)
        ax.plot(numbers["x"][-1], numbers["mean"][-1], marker=style["marker"], color=style["color"], markersize=7,
                linestyle="none", markeredgecolor="white", zorder=5)
        updates = statistics.fmean(run.metrics[TOTAL_PARAM_UPDATES] for run in runs)
        ends.append((numbers["x"][-1], numbers["mean"][-1], f"{curve.schedule}: {updates:,.0f} updates", style["color"]))
        if x is not None:  # milestones of this curve: the last point before each change
            steps = sorted({s for run in runs for s in change_steps(run)})
            at = [s - 1 for s in steps if 0 < s <= len(numbers["x"])]
            ax.plot(numbers["x"][at], numbers["mean"][at], color=style["color"], **MILESTONE_POINT, zorder=4)
    ax.grid(alpha=0.3)
    _label_ends(ax, ends)


def plain_log(axis) -> None:
    """A log axis with plain numbers at 1, 2 and 5 x 10^k: a sweep's values often span less
    than a decade, where the default labels 10^k only (or 9x10^1)."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 100 else f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _updates_axis(ax) -> None:
    ax.set(xscale="log", xlabel="parameter updates (optimizer steps, log scale)")
    plain_log(ax.xaxis)


def _steps(ax, curves: Sequence[Curve], styles: dict, name: str) -> None:
    """A per-epoch setting (lr, B, g) as a step function, one per run (seeds of a step schedule
    coincide; a plateau schedule's differ): epoch k's value over [k - 1, k]."""
    for curve in curves:
        style = styles[curve.schedule]
        for run in curve.finished:
            values = run.history[name]
            ax.step(np.arange(len(values) + 1), np.append(values, values[-1]), where="post",
                    color=style["color"], linestyle=style["linestyle"], linewidth=1.6)
            ax.plot(len(values), values[-1], marker=style["marker"], color=style["color"], markersize=7,
                    linestyle="none", markeredgecolor="white", zorder=5, clip_on=False)
    _mark_milestones_epochs(ax, curves)
    _epoch_axis(ax, curves)
    ax.grid(alpha=0.3)


def plot_schedules(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 1: learning rate (a) and batch size (b) against epochs, both log."""
    fig, (lr, batch) = new_figure(title, ncols=2)
    _steps(lr, curves, styles, LR)
    lr.set(yscale="log", ylabel="learning rate (log scale)", title="(a) learning rate")
    _steps(batch, curves, styles, BATCH_SIZE)
    batch.set(yscale="log", ylabel="batch size (samples, log scale)", title="(b) batch size")
    plain_log(lr.yaxis)
    plain_log(batch.yaxis)
    _legend(fig, curves, styles, [MILESTONE_HANDLE])
    return fig


def _loss_axis(ax, curves: Sequence[Curve]) -> None:
    """Training cross-entropy on a log axis when it falls by more than 10x, else linear (less
    than a decade on a log axis shows little but the tick labels)."""
    values = [v for c in curves for run in c.finished for v in run.history[TRAIN_LOSS] if v > 0]
    if values and max(values) > 10 * min(values):
        ax.set(yscale="log", ylabel="training cross-entropy (nats, log scale)")
        plain_log(ax.yaxis)
    else:
        ax.set_ylabel("training cross-entropy (nats)")


def plot_train_loss_epochs(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 2a: training cross-entropy against epochs."""
    fig, (ax,) = new_figure(title)
    _mark_milestones_epochs(ax, curves)
    _epoch_axis(ax, curves)
    _loss_axis(ax, curves)
    _curves(ax, curves, styles, TRAIN_LOSS)
    _legend(fig, curves, styles, [MILESTONE_HANDLE], bands=True)
    return fig


def plot_train_loss_updates(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 2b: training cross-entropy against parameter updates."""
    fig, (ax,) = new_figure(title)
    _updates_axis(ax)
    _loss_axis(ax, curves)
    _curves(ax, curves, styles, TRAIN_LOSS, x=PARAM_UPDATES)
    _legend(fig, curves, styles, [MILESTONE_TICK_HANDLE], bands=True)
    return fig


def _test_acc_epochs(ax, curves: Sequence[Curve], styles: dict) -> None:
    _mark_milestones_epochs(ax, curves)
    _epoch_axis(ax, curves)
    ax.set_ylabel("test accuracy (%)")
    _curves(ax, curves, styles, TEST_ACC, y_scale=100)


def plot_test_acc_epochs(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 3 (one panel): test accuracy against epochs."""
    fig, (ax,) = new_figure(title)
    _test_acc_epochs(ax, curves, styles)
    _legend(fig, curves, styles, [MILESTONE_HANDLE], bands=True)
    return fig


def plot_test_acc_updates(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Figure 5: test accuracy against parameter updates."""
    fig, (ax,) = new_figure(title)
    _updates_axis(ax)
    ax.set_ylabel("test accuracy (%)")
    _curves(ax, curves, styles, TEST_ACC, x=PARAM_UPDATES, y_scale=100)
    _legend(fig, curves, styles, [MILESTONE_TICK_HANDLE], bands=True)
    return fig


def plot_noise_scale(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """The noise scale g = lr/(1-m)·(N/B - 1) per epoch, and why equal-g schedules differ when
    they do."""
    fig, (ax,) = new_figure(title)
    _steps(ax, curves, styles, NOISE_SCALE)
    ax.set(yscale="log", ylabel="noise scale g = lr/(1-m)·(N/B - 1)  (log scale)")
    plain_log(ax.yaxis)
    spread = minus_one_spread({c.schedule: c.finished for c in curves})
    if spread is not None and spread > 1e-6:
        ax.set_title(f"lr·N/(B(1-m)) is equal for every curve at every epoch, yet g differs by up to "
                     f"{100 * spread:.1f}%:\nthe -1 in N/B - 1 does not scale with B, so a larger B gets a "
                     f"slightly smaller g", fontsize="small")
    _legend(fig, curves, styles, [MILESTONE_HANDLE])
    return fig


def plot_val_loss_wall_time(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    fig, (ax,) = new_figure(title)
    ax.set(xlabel="training time (s, cumulative; validation excluded)", ylabel="validation cross-entropy (nats)")
    _curves(ax, curves, styles, VAL_LOSS, x=WALL_TIME_S)
    _legend(fig, curves, styles, [MILESTONE_TICK_HANDLE], bands=True)
    return fig


def plot_totals(rows: list[ReportRow], styles: dict, title: str, baseline: str | None) -> Figure:
    """Bars of mean training time (train_time_s: the training steps, not the whole job) and
    parameter updates per run (std over seeds as error bars), each bar labelled with its ratio
    to the baseline."""
    fig, axes = new_figure(title, ncols=2)
    rows = [row for row in rows if row.n_finished]
    names = [row.schedule for row in rows]
    for ax, name, label in zip(axes, (TRAIN_TIME_S, TOTAL_PARAM_UPDATES),
                               ("training time per run (s)", "parameter updates per run")):
        bars = ax.bar(names, [row.numbers[name].mean for row in rows],
                      yerr=[row.numbers[name].std or 0 for row in rows], capsize=4,
                      color=[styles[s]["color"] for s in names])
        ratios = [row.numbers[name].ratio for row in rows]
        ax.bar_label(bars, ["" if r is None else f"{r:.2f}x" for r in ratios], label_type="center")
        ax.set(ylabel=label, xlabel="schedule" + (f" (in the bar: ratio to {baseline})" if baseline else ""))
        ax.grid(axis="y", alpha=0.3)
    return fig


# stem -> (heading, plot function of the group's curves with a finished run); plot_totals reads the rows.
FIGURES = {
    "fig1_lr_batch_size": ("Fig. 1: learning rate and batch size vs epochs", plot_schedules),
    "fig2a_train_loss_epochs": ("Fig. 2a: training cross-entropy vs epochs", plot_train_loss_epochs),
    "fig2b_train_loss_updates": ("Fig. 2b: training cross-entropy vs parameter updates", plot_train_loss_updates),
    "fig3_test_acc_epochs": ("Fig. 3: test accuracy vs epochs", plot_test_acc_epochs),
    "fig5_test_acc_updates": ("Fig. 5: test accuracy vs parameter updates", plot_test_acc_updates),
    "noise_scale_epochs": ("Noise scale vs epochs (equal-g schedules overlap)", plot_noise_scale),
    "val_loss_wall_time": ("Validation loss vs training time", plot_val_loss_wall_time),
}
TOTALS = ("totals_bars", "Training time and parameter updates per run (mean ± std over seeds)")
PAPER_FIGURES = list(FIGURES)[:5]  # the paper's own figures 1, 2a, 2b, 3 and 5: a report links these


def paper_figure_links(drawn: set[str], prefix: str) -> list[tuple[str, str]]:
    """(heading, path) of each paper figure among `drawn` (paths relative to the report) whose
    path is `prefix` (a group's folder, '' or '<label>/') and its stem, in the paper's order."""
    return [(FIGURES[stem][0], f"{prefix}{stem}.png") for stem in PAPER_FIGURES if f"{prefix}{stem}.png" in drawn]


def save(fig: Figure, folder: Path, stem: str, dpi: int) -> list[Path]:
    written = []
    with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, editable
        for suffix in (".png", ".svg"):
            fig.savefig(folder / f"{stem}{suffix}", dpi=dpi)
            written.append(folder / f"{stem}{suffix}")
    plt.close(fig)
    return written


def write_figures(folder: Path, group: Group, rows: list[ReportRow], baseline: str | None, styles: dict,
                  title: str, dpi: int = DPI) -> list[Path]:
    """Every figure of one group, as PNG and SVG; returns the files written."""
    curves = [curve for curve in group.curves.values() if curve.finished]
    if not curves:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (heading, plot) in FIGURES.items():
        written += save(plot(curves, styles, f"{heading}\n{title}"), folder, stem, dpi)
    written += save(plot_totals(rows, styles, f"{TOTALS[1]}\n{title}", baseline), folder, TOTALS[0], dpi)
    measured = [curve for curve in curves if any(run.history.get(GNS_B_SIMPLE) for run in curve.finished)]
    if measured:
        written += save(plot_b_simple(measured, styles, f"{B_SIMPLE[1]}\n{title}"), folder, B_SIMPLE[0], dpi)
    return written


B_SIMPLE = ("b_simple_epochs", "Batch size and the measured noise scale B_simple vs epochs")


def plot_b_simple(curves: Sequence[Curve], styles: dict, title: str) -> Figure:
    """Each curve that measured the gradient noise scale: its B per epoch (steps, one per seed)
    and the smoothed B_simple logged for that epoch (mean over seeds, min-max band), so where the
    batch follows the estimate, and where a cap or the schedule held it, can be read off."""
    fig, (ax,) = new_figure(title)
    _steps(ax, curves, styles, BATCH_SIZE)
    for curve in curves:
        runs = [run for run in curve.finished if run.history.get(GNS_B_SIMPLE)]
        numbers = series(runs, GNS_B_SIMPLE)
        color = styles[curve.schedule]["color"]
        ax.plot(numbers["x"], numbers["mean"], color=color, linestyle=(0, (4, 2)), linewidth=1.2, marker=".")
        if len(runs) > 1:
            ax.fill_between(numbers["x"], numbers["low"], numbers["high"], color=color, alpha=0.15, linewidth=0)
    ax.set(yscale="log", ylabel="samples (log scale)")
    plain_log(ax.yaxis)
    _legend(fig, curves, styles, [(Line2D([], [], color="k", linewidth=1.6), "batch size B (step: the epoch's)"),
                                  (Line2D([], [], color="k", linestyle=(0, (4, 2)), marker="."),
                                   "B_simple logged for the epoch (mean; band: min to max)"),
                                  MILESTONE_HANDLE])
    return fig


def plot_optimizer_panels(panels: list[tuple[str, Group]], styles: dict, title: str) -> Figure:
    """Figures 3 and 4: test accuracy against epochs, one panel per optimizer."""
    fig, axes = new_figure(title, ncols=len(panels))
    shown: dict[str, Curve] = {}
    for letter, ax, (panel_title, group) in zip("abcd", axes, panels):
        curves = [curve for curve in group.curves.values() if curve.finished]
        _test_acc_epochs(ax, curves, styles)
        ax.set_title(f"({letter}) {panel_title}")
        for curve in curves:
            shown.setdefault(curve.schedule, curve)
    _legend(fig, list(shown.values()), styles, [MILESTONE_HANDLE], bands=True)
    return fig


def write_optimizer_figures(folder: Path, groups: list[Group], styles: dict, title: str,
                            dpi: int = DPI) -> list[Path]:
    """When the sweep varies the optimizer: figures 3 and 4 for each setting of the other axes
    (in that setting's folder), with the optimizers that ran."""
    if not any(key.startswith("optimizer.") for group in groups for key in group.setting):
        return []
    by_rest: dict[tuple, list[Group]] = {}
    for group in groups:
        rest = tuple((k, v) for k, v in group.setting.items() if not k.startswith("optimizer."))
        by_rest.setdefault(rest, []).append(group)
    written = []
    for rest, members in by_rest.items():
        named = {optimizer_name(g.runs[0].params): g for g in members}
        if len(named) < len(members):  # two groups with one optimizer name: the panels would be ambiguous
            continue
        named = {name: g for name, g in named.items() if any(c.finished for c in g.curves.values())}
        label = ",".join(f"{key}={short_value(value)}" for key, value in rest)
        target = folder / folder_name(label) if label else folder
        target.mkdir(parents=True, exist_ok=True)
        for stem, (heading, panels) in OPTIMIZER_FIGURES.items():
            chosen = [(panel, named[name]) for name, panel in panels.items() if name in named]
            if chosen:
                heading_title = f"{heading}\n{title}" + (f"  [{label}]" if label else "")
                written += save(plot_optimizer_panels(chosen, styles, heading_title), target, stem, dpi)
    return written
