"""Figures that set groups or studies side by side, as PNG: a sweep across one number (each
schedule against its baseline, by src.figures), the equal-g grid of claim N and claim A's
ablation bars (by src.reproduce). The per-group figures of the paper are src.plots.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from src.groups import Curve, Group, reached_cap
from src.intervals import interval
from src.noise_dial import EqualGSet, arm_accuracies
from src.plots import DPI, new_figure, plain_log
from src.runs import RunData
from src.schema import FINAL_TEST_ACC, TOTAL_PARAM_UPDATES, TRAIN_LOSS
from src.verdict import ReportRow, diverged_runs, series

ACROSS = ("across_", "Each schedule against its baseline across")  # + the axis: across_schedule.factor.png


def plot_across(axis: str, groups: Sequence[Group], sections: dict[str, list[ReportRow]], styles: dict,
                title: str) -> Figure:
    """A sweep over one number (schedule.factor=2,5,10): each schedule's final test accuracy
    minus its group's baseline (paired, with its interval) and its parameter updates over the
    baseline's, against the axis' value; a hollow mark where B reached its cap
    (schedule.max_batch_size), from where lr decay took the rest of the anneal."""
    fig, (acc_ax, upd_ax) = new_figure(title, ncols=2)
    values = {group.label: float(group.setting[axis]) for group in groups}
    capped_any = False
    for schedule in sorted({row.schedule for rows in sections.values() for row in rows if row.baseline
                            and row.schedule != row.baseline}):
        style, points = styles[schedule], []
        for group in groups:
            row = next((r for r in sections[group.label] if r.schedule == schedule), None)
            if row is None or row.comparison.acc_diff_points is None:
                continue
            found, capped = row.comparison, reached_cap(group.curves[schedule])
            capped_any |= bool(capped)
            points.append((values[group.label], found, row.numbers[TOTAL_PARAM_UPDATES].ratio, capped))
        if not points:
            continue
        x = [p[0] for p in points]
        for ax, y in ((acc_ax, [p[1].acc_diff_points for p in points]), (upd_ax, [p[2] for p in points])):
            ax.plot(x, y, color=style["color"], linestyle=style["linestyle"], linewidth=1.2)
            for (value, _, _, capped), y_value in zip(points, y):
                ax.plot(value, y_value, marker=style["marker"], markersize=8, linestyle="none", color=style["color"],
                        markerfacecolor="white" if capped else style["color"], zorder=5)
        low = [p[1].acc_diff_points - (p[1].acc_diff_low if p[1].acc_diff_low is not None else p[1].acc_diff_points)
               for p in points]
        high = [(p[1].acc_diff_high if p[1].acc_diff_high is not None else p[1].acc_diff_points) - p[1].acc_diff_points
                for p in points]
        acc_ax.errorbar(x, [p[1].acc_diff_points for p in points], yerr=[low, high], fmt="none",
                        ecolor=style["color"], capsize=4)
    baseline = next((row.baseline for rows in sections.values() for row in rows if row.baseline), "the baseline")
    acc_ax.axhline(0, color="k", linewidth=0.8)
    acc_ax.set(ylabel=f"test accuracy minus {baseline}'s (points; bar: interval)")
    upd_ax.set(ylabel=f"parameter updates / {baseline}'s", ylim=(0, None))
    for ax in (acc_ax, upd_ax):
        ax.set_xlabel(axis)
        ax.set_xticks(sorted(set(values.values())), [f"{v:g}" for v in sorted(set(values.values()))])
        ax.grid(alpha=0.3)
    extra = [(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none"),
              "B reached its cap (schedule.max_batch_size): lr decay took the rest")] if capped_any else []
    handles = [(Line2D([], [], color=styles[s]["color"], linestyle=styles[s]["linestyle"], marker=styles[s]["marker"]), s)
               for s in sorted(styles) if any(r.schedule == s and r.baseline and s != r.baseline
                                              for rows in sections.values() for r in rows)]
    fig.legend([h for h, _ in handles + extra], [label for _, label in handles + extra], loc="outside lower center",
               ncols=3, fontsize="small", frameon=False)
    return fig


def plot_accuracy_against_g(sets: Sequence[EqualGSet], path: Path, confidence: float) -> None:
    """The equal-g grid: final test accuracy against g (log axis), one mark per (lr, B, m) with its
    interval over seeds, coloured by B (log colour scale), squares for a momentum other than the
    sets' usual one; marks of one g spread a little sideways so that none hides another."""
    fig, (ax,) = new_figure("The noise scale as the one dial: final test accuracy against g\n"
                         "(runs at equal g = lr/(1-m)·(N/B - 1) should end alike while B << N)")
    arms = [(s.g, arm) for s in sets for arm in [s.reference, *s.arms]]
    sizes = [arm.setting.batch_size for _, arm in arms]
    norm, cmap = LogNorm(min(sizes), max(sizes)), plt.get_cmap("viridis")
    usual = sets[0].reference.setting.momentum
    for s in sets:
        members = [s.reference, *s.arms]
        for i, arm in enumerate(members):
            accs = [100 * acc for acc in arm_accuracies(arm.curve)]
            if not accs:
                continue
            found = interval(accs, "percent", confidence)
            x = s.g * 1.08 ** (i - (len(members) - 1) / 2)
            mean = statistics.fmean(accs)
            yerr = None if found.low is None else [[mean - found.low], [found.high - mean]]
            color = cmap(norm(arm.setting.batch_size))
            ax.errorbar(x, mean, yerr=yerr, fmt="s" if arm.setting.momentum != usual else "o", color=color,
                        markersize=7, capsize=3, markeredgecolor="k", markeredgewidth=0.5)
    ax.set(xscale="log", xlabel="noise scale g (log scale)", ylabel="final test accuracy (%, mean; bar: interval)")
    plain_log(ax.xaxis)
    ax.grid(alpha=0.3)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="batch size B (log scale)")
    others = sorted({arm.setting.momentum for _, arm in arms} - {usual})
    handles = [Line2D([], [], marker="o", color="0.5", linestyle="none", markeredgecolor="k")]
    labels = [f"momentum {usual:g}"]
    if others:
        handles.append(Line2D([], [], marker="s", color="0.5", linestyle="none", markeredgecolor="k"))
        labels.append(f"momentum {', '.join(f'{m:g}' for m in others)} (lr/(1-m) fixed)")
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_equal_g_losses(sets: Sequence[EqualGSet], path: Path) -> None:
    """Training loss against epochs, one panel per equal-g set, one line per (lr, B, m) coloured
    by B (mean over seeds): where the theory holds, the lines of a panel lie on each other."""
    ncols = min(len(sets), 2)
    nrows = -(-len(sets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.2 * nrows), squeeze=False, layout="constrained",
                             sharey=True)
    fig.suptitle("Training cross-entropy vs epochs at equal noise scale g (mean over seeds)")
    sizes = [arm.setting.batch_size for s in sets for arm in [s.reference, *s.arms]]
    norm, cmap = LogNorm(min(sizes), max(sizes)), plt.get_cmap("viridis")
    usual = sets[0].reference.setting.momentum
    for ax, s in zip(axes.flat, sets):
        for arm in [s.reference, *s.arms]:
            if not arm.curve.finished:
                continue
            numbers = series(arm.curve.finished, TRAIN_LOSS)
            ax.plot(numbers["x"], numbers["mean"], color=cmap(norm(arm.setting.batch_size)),
                    linestyle="--" if arm.setting.momentum != usual else "-", linewidth=1.4,
                    label=f"B {arm.setting.batch_size:,}, lr {arm.setting.lr:g}, m {arm.setting.momentum:g}")
        ax.set(title=f"g = {s.g:g}", yscale="log", xlabel="epochs trained (epoch k ends at k)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", frameon=False)
    for ax in axes[:, 0]:
        ax.set_ylabel("training cross-entropy (nats, log scale)")
    for ax in list(axes.flat)[len(sets):]:
        ax.set_visible(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_ablation(spec: dict, schedules: Sequence[str], runs_by_study: dict[str, list[RunData]],
                  path: Path) -> bool:
    """Claim A: final test accuracy per ablation study (runs_by_study's, in its order) and
    schedule: bars the mean over the seeds that finished, dots each seed, crosses at 0 the seeds
    whose loss diverged. `spec`: conf/reproduction.yaml's ablation. False: no study ran."""
    studies = [name for name, runs in runs_by_study.items() if runs]
    if not studies:
        return False
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    width = 0.8 / len(schedules)
    for i, schedule in enumerate(schedules):
        for j, study in enumerate(studies):
            curve = Curve(schedule, [r for r in runs_by_study[study] if r.schedule == schedule])
            x = j + (i - (len(schedules) - 1) / 2) * width
            values = [100 * r.metrics[FINAL_TEST_ACC] for r in curve.finished]
            if values:
                ax.bar(x, statistics.fmean(values), width, color=f"C{i}")
                ax.plot([x] * len(values), values, "k.", markersize=5)
            diverged = diverged_runs(curve)
            ax.plot([x] * len(diverged), [0] * len(diverged), "kx", markersize=7, clip_on=False)
    names = ["reference" if s == spec["reference"] else s.removeprefix("ablation_") for s in studies]
    ax.set_xticks(range(len(studies)), names, rotation=20, ha="right")
    ax.set(ylabel="final test accuracy (%)", ylim=(0, 100))
    fig.suptitle(f"Claim A: what recovers {' and '.join(spec['arms'])}\n({spec['reference']}, one change per study)")
    handles = [Patch(color=f"C{i}", label=schedule) for i, schedule in enumerate(schedules)]
    handles += [Line2D([], [], color="k", marker=".", linestyle="none", label="a seed (bar: the mean)"),
                Line2D([], [], color="k", marker="x", linestyle="none", label="a seed that diverged")]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True
