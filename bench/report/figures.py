"""Figures of a comparison, drawn with seaborn / matplotlib from stored results only.

Each function returns a matplotlib Figure, or None when the study has nothing to draw for it
(no GradNorm arm, no grid, ...). `all_figures` yields (id, title, figure) tuples.
"""

from __future__ import annotations

import functools
import itertools
import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.axis import Axis  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy import stats as sps  # noqa: E402

from bench.compare.analysis import Comparison, GridSelection, placing_means, points_seeds, representatives, seeds_words  # noqa: E402
from bench.compare.stats import summarize  # noqa: E402
from bench.formatting import count, format_number, join_words  # noqa: E402
from bench.store.export import task_normalised  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
# Names come from study files and problems of one's own: mathtext would draw an arm named
# "gn $x_1$" as math and fail on "$\foo$". The figures' own powers of ten are Unicode instead.
plt.rcParams["text.parse_math"] = False

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_label(value: float) -> str:
    """A number in scientific notation without mathtext: 10⁵, 2×10⁻⁴, -10⁶.

    >>> power_label(1e5), power_label(2e-4), power_label(-1e6), power_label(0.0)
    ('10⁵', '2×10⁻⁴', '-10⁶', '0')
    >>> power_label(99996.0)  # rounded to 3 digits: 10.0×10⁴, written as the next power
    '10⁵'
    """
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = float(f"{abs(value) / 10 ** exponent:.3g}")
    if mantissa >= 10:  # 9.9996 rounded up
        mantissa, exponent = mantissa / 10, exponent + 1
    sign = "-" if value < 0 else ""
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    return f"{sign}{power}" if mantissa == 1 else f"{sign}{mantissa:g}×{power}"


# From this many seeds on, the 95% interval of a mean (± t sd/√n) is about as wide as the seeds'
# own spread; with fewer it is far wider (3x the expected range at 3 seeds, 16x at 2), and a
# band or bar of it swamps the values it summarises, so the figures draw the seeds instead.
INTERVAL_MIN_SEEDS = 5


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% Student-t interval of the mean, as in the tables. Seaborn's default bootstrap
    interval is random and, over the usual 3 seeds, about 2.5x too narrow."""
    s = summarize(list(values))
    return s.ci_low, s.ci_high


def _fewest_seeds(data: pd.DataFrame, by: str) -> int:
    """The fewest seeds of any group of `data` by its column `by` (an arm's label)."""
    return int(data.groupby(by).seed.nunique().min())


def _nested_sizes(n: int, largest: float, smallest: float) -> list[float]:
    """Marker sizes shrinking in drawing order, so that arms landing on one spot (GradNorm and
    its static retrain often do) stay visible as nested markers instead of hiding each other."""
    return list(np.linspace(largest, smallest, n))  # n = 1: [largest]


def _records(c: Comparison) -> pd.DataFrame:
    """Finished runs' records joined with their label and variant."""
    columns = ["label", "variant", "kind", "seed", "status"]
    info = c.runs.set_index(["arm", "run_key"])[columns]
    rows = []
    for entry in c.records:
        if entry["record"] is None:
            continue
        key = (entry["arm"], entry["run_key"])
        if key in info.index:
            rows.append({**info.loc[key].to_dict(), "arm": entry["arm"], "record": entry["record"]})
    return pd.DataFrame(rows, columns=[*columns, "arm", "record"])  # the columns even with no record


def _table_order(c: Comparison, labels: pd.Series) -> list[str]:
    """The labels drawn, in the order of the tables' rows (then any the tables lack)."""
    drawn = set(labels)
    return list(dict.fromkeys([label for label in c.main.arm if label in drawn] + list(labels)))


# The colorblind palette with its vermilion moved back: the first four arms (equal, GradNorm,
# its static retrain, a grid) then get four hues that no reader confuses, and the fifth (the
# default study's loss-scale) the muted tan, not the vermilion that reads as GradNorm's orange.
_ARM_PALETTE = [sns.color_palette("colorblind")[i] for i in (0, 1, 2, 4, 5, 9, 3, 7, 6, 8)]
_FIRST_COLOURED = ("equal", "gradnorm", "gradnorm-static", "grid")


def distinct_colours(n: int) -> list[tuple[float, float, float]]:
    """n colours no two alike: the colour-blind palette up to its 10, then evenly spaced hues
    (the palette repeats itself: with 12 tasks, task10 took task0's blue).

    >>> len(set(distinct_colours(12))), distinct_colours(3) == sns.color_palette("colorblind", 3)
    (12, True)
    """
    return sns.color_palette("colorblind" if n <= 10 else "husl", n)


def arm_colours(c: Comparison) -> dict[str, tuple[float, float, float]]:
    """One colour per arm label, the same in every figure of the report. Each arm has a hue of
    its own, and the labels of an arm with several variants (a GradNorm arm's alphas) are shades
    of it, light to dark in the tables' order: with a hue per label, six alphas took the whole
    palette, and GradNorm's lines took the grid's pink. The comparison's own arms take the
    palette's first hues whatever the other arms are called: in alphabetical order, a `dwa` arm
    had taken equal's blue and shifted every other arm's hue."""
    kinds = dict(zip(c.runs.arm, c.runs.kind))
    labels = list(dict.fromkeys([*c.main.arm, *c.runs.label]))
    # A grid's best point that weights every task: the grid's hue, darker (a hue of its own, the
    # palette's vermilion, read as GradNorm's orange).
    weighted_all = {g.weighted_all_label: arm for arm, g in c.grids.items()}
    arm_of = dict(zip(c.runs.label, c.runs.arm))
    arms = list(dict.fromkeys(arm_of.get(label, label) for label in labels if label not in weighted_all))
    rank = {kind: i for i, kind in enumerate(_FIRST_COLOURED)}
    arms.sort(key=lambda arm: rank.get(kinds.get(arm, ""), len(rank)))  # stable: ties keep their order
    colours: dict[str, tuple[float, float, float]] = {}
    hues = _ARM_PALETTE if len(arms) <= len(_ARM_PALETTE) else distinct_colours(len(arms))
    for i, arm in enumerate(arms):
        hue = hues[i]
        variants = [label for label in labels if arm_of.get(label, label) == arm and label not in weighted_all]
        for label, depth in zip(variants, np.linspace(-0.45, 0.45, len(variants)) if len(variants) > 1 else [0.0]):
            colours[label] = _shade(hue, depth)
    for label, arm in weighted_all.items():
        if label in labels and arm in colours:
            colours[label] = _shade(colours[arm], 0.4)
    return colours


def _shade(rgb: tuple[float, ...], depth: float) -> tuple[float, float, float]:
    """`rgb` mixed with white (depth < 0) or black (depth > 0) by |depth|."""
    target = 0.0 if depth > 0 else 1.0
    r, g, b = (float(x + abs(depth) * (target - x)) for x in rgb[:3])
    return r, g, b


def _loss_scale(ax: plt.Axes, values: np.ndarray, axis: str = "y") -> str:
    """A log axis for losses spanning more than a decade; a linear one otherwise (a log axis over
    a narrow range only gains labels like 2.4 x 10^0)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    wide = values.size > 1 and values.max() / values.min() > 10
    scale = "log" if wide else "linear"
    (ax.set_yscale if axis == "y" else ax.set_xscale)(scale)
    if wide:
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(_PlainLogFormatter())
        target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    return scale


PLAIN_RANGE = (1e-3, 1e5)  # tick labels within it read best as plain numbers; beyond, as powers of ten


def _needs_powers(values: Iterable[float]) -> bool:
    return any(v != 0 and not PLAIN_RANGE[0] <= abs(v) < PLAIN_RANGE[1] for v in values)


class _PlainLogFormatter(ticker.LogFormatterSciNotation):
    """A log axis's labels, where matplotlib puts them, as plain numbers: 0.2 and 300 rather than
    2 x 10^-1 and 3 x 10^2; an axis whose decades reach outside [0.001, 100000) has every label
    in powers of ten (10⁰ to 10⁸), as "10000" beside "10⁶" would read as two notations."""

    powers = False

    def set_locs(self, locs: Sequence[float] | None = None) -> None:
        """Matplotlib calls this once before labelling the ticks: the notation is decided here, on
        the axis's major ticks in view, so that its minor labels follow suit."""
        super().set_locs(locs)
        if isinstance(self.axis, Axis):  # not a formatter used on its own
            low, high = sorted(self.axis.get_view_interval())
            self.powers = _needs_powers(t for t in self.axis.get_majorticklocs() if low <= t <= high)

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)  # "" where matplotlib leaves a tick unlabelled
        if not label:
            return label
        return power_label(x) if self.powers else f"{x:g}"


def _legend_below(fig: plt.Figure, handles: list, labels: list[str], ncol: int) -> None:
    """One legend under every panel, in as many columns (up to `ncol`) as the figure's width
    holds; the figure grows by the legend's height, so the panels keep theirs. A fixed margin
    let a legend of many arms cover the x axis's label, and a wide one run off the figure."""
    for columns in range(min(ncol, len(labels)), 0, -1):
        legend = fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=columns,
                            fontsize="small", frameon=False)
        box = legend.get_window_extent()  # on the figure's renderer
        if box.width <= fig.bbox.width or columns == 1:
            break
        legend.remove()
    room = box.height / fig.dpi + 0.1  # inches, with a tenth between the legend and the lowest label
    fig.set_figheight(fig.get_figheight() + room)
    fig.tight_layout(rect=(0, room / fig.get_figheight(), 1, 1))


def _panels(n: int, width: float, height: float, extra_width: float = 0.0) -> tuple[plt.Figure, list]:
    """n panels of width x height inches, at most two a row: three in a row shrink to unreadable
    text at the report's width. Returns the figure and its axes in reading order: the n panels,
    then a hidden spare where n is odd and above 1."""
    ncols = min(2, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + extra_width, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _same_runs(c: Comparison, label: str) -> str:
    """The labels that trained exactly as `label` (see Comparison.twins), for the title of its
    panel: drawn once, they are named there rather than drawn again beside it."""
    twins = [twin for twin, same in c.twins.items() if same == label]
    if not twins:
        return ""
    return f"{join_words(twins)}: the same runs"


def _task_panels(c: Comparison, data: pd.DataFrame,
                 draw: Callable[[plt.Axes, str, pd.DataFrame, dict], None]) -> plt.Figure:
    """One panel per GradNorm label in `data` (rows with label, step, task, ...), drawn by
    `draw(ax, label, its rows, a colour per task)`, and one task legend beside the first row's
    last panel: inside, with many tasks it hid the largest weights."""
    labels = list(dict.fromkeys(data.label))
    fig, axes = _panels(len(labels), 6.5, 4.2, extra_width=1.2)
    palette = dict(zip(c.tasks, distinct_colours(len(c.tasks))))
    for ax, label in zip(axes, labels):
        draw(ax, label, data[data.label == label], palette)
        ax.set_xlabel("step")
        ax.get_legend().remove()
    handles, names = axes[0].get_legend_handles_labels()
    axes[min(1, len(labels) - 1)].legend(handles, names, title="task", loc="upper left",
                                         bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


# Methods whose weights move with the losses, drawn over training (random weights are noise).
ADAPTIVE_KINDS = ("gradnorm", "uncertainty", "dwa")


def weight_trajectories(c: Comparison) -> plt.Figure | None:
    """Each adaptive arm's weights over training, one line per seed: GradNorm's, and those it is
    set against (the paper finds uncertainty weighting's grow "too large too fast")."""
    records = _records(c)
    adaptive = records[records.kind.isin(ADAPTIVE_KINDS) & (records.status == "ok") & ~records.label.isin(c.twins)]
    if adaptive.empty:
        return None
    kind_of = dict(zip(adaptive.label, adaptive.kind))
    frames = []
    for _, r in adaptive.iterrows():
        points = np.asarray(r.record["weights_trajectory"], dtype=float).reshape(-1, 1 + len(c.tasks))  # (step, w_1..w_T)
        frames.append(pd.DataFrame({"label": r.label, "seed": r.seed,
                                    "step": np.repeat(points[:, 0], len(c.tasks)),
                                    "task": np.tile(c.tasks, len(points)), "weight": points[:, 1:].ravel()}))

    def draw(ax: plt.Axes, label: str, d: pd.DataFrame, palette: dict) -> None:
        sns.lineplot(data=d, x="step", y="weight", hue="task", units="seed", estimator=None,
                     lw=0.9, alpha=0.8, palette=palette, ax=ax)
        means = c.main.set_index("arm").loc[label, "weights"]
        for task, mean in zip(c.tasks, means):
            ax.axhline(mean, color=palette[task], ls="--", lw=1.2)
        if d.weight.min() <= 0:  # the paper has no floor: mark where a weight stops training its task
            ax.axhline(0, color="0.15", lw=0.9)
        unscaled = kind_of[label] == "uncertainty"  # Kendall et al.'s c_i exp(-s_i), whatever their sum
        notes = [note for note in ("not rescaled to sum to T" if unscaled else "", _same_runs(c, label)) if note]
        ax.set_title(f"{label}: w_i(t), one line per seed; dashed: time average"
                     + (f"\n({'; '.join(notes)})" if notes else ""))
        ax.set_ylabel("task weight w_i")

    return _task_panels(c, pd.concat(frames, ignore_index=True), draw)


def gradient_norms(c: Comparison) -> plt.Figure | None:
    """GradNorm's per-task gradient norms at W against the targets it pulls them to, both over
    their mean G_bar(t), averaged over seeds: where the solid line meets its dashed one, GradNorm
    balanced that task."""
    records = _records(c)
    adaptive = records[(records.kind == "gradnorm") & (records.status == "ok") & ~records.label.isin(c.twins)]
    columns = ("G_i / G_bar", "target / G_bar")
    frames = []
    for _, r in adaptive.iterrows():
        traces = r.record.get("traces") or {}
        if "target_norms" not in traces:  # stored before the targets were recorded
            continue
        norms = np.asarray(traces["grad_norms"], dtype=float).reshape(-1, 1 + len(c.tasks))  # (step, G_1..G_T)
        targets = np.asarray(traces["target_norms"], dtype=float).reshape(-1, 1 + len(c.tasks))[:, 1:]
        mean = norms[:, 1:].mean(axis=1, keepdims=True)
        kept = mean[:, 0] > 0  # NaN too
        frames.append(pd.DataFrame({
            "label": r.label, "seed": r.seed, "step": np.repeat(norms[kept, 0], len(c.tasks)),
            "task": np.tile(c.tasks, int(kept.sum())),
            # Divided after the mask: a step whose norms are all 0 warned of 0 / 0 in every report.
            columns[0]: (norms[kept, 1:] / mean[kept]).ravel(), columns[1]: (targets[kept] / mean[kept]).ravel()}))
    if not frames or not sum(map(len, frames)):
        return None

    def draw(ax: plt.Axes, label: str, d: pd.DataFrame, palette: dict) -> None:
        # Averaged over seeds here, in one groupby: seaborn's own estimator, called once per step
        # and task, took 5 s for ten seeds of T = 10 over 2,000 steps.
        means = d.groupby(["task", "step"], sort=False)[list(columns)].mean().reset_index()
        for column, dashes in zip(columns, (None, (0, (4, 2)))):
            sns.lineplot(data=means, x="step", y=column, hue="task", hue_order=c.tasks, estimator=None,
                         lw=1.1, palette=palette, ax=ax, legend=dashes is None,
                         **({"linestyle": dashes} if dashes else {}))
        scale = _loss_scale(ax, pd.concat([d[columns[0]], d[columns[1]]]))
        same = _same_runs(c, label)
        ax.set_title(f"{label}: G_i(t) / G_bar(t), mean over seeds\ndashed: its target r_i(t)^alpha"
                     + (f" ({same})" if same else ""))
        ax.set_ylabel("gradient norm at W over its mean" + (" (log scale)" if scale == "log" else ""))

    return _task_panels(c, pd.concat(frames, ignore_index=True), draw)


def test_loss_curves(c: Comparison) -> plt.Figure | None:
    records = representatives(_records(c), c.grids)
    records = records[records.status == "ok"]
    if records.empty:
        return None
    normalisers = None
    rows = []
    for _, r in records.iterrows():
        rec = r.record
        normalisers = rec["normalisers"]
        for step, losses in zip(rec["curves"]["step"], rec["curves"]["test"]):
            rows.append({"arm": r.label, "seed": r.seed, "step": step,
                         "loss": task_normalised(losses, normalisers)})
    data = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(10, 4.6))
    order = _table_order(c, data.arm)
    palette = arm_colours(c)
    few = _fewest_seeds(data, "arm") < INTERVAL_MIN_SEEDS
    if few:  # each seed thin, under the means
        sns.lineplot(data=data, x="step", y="loss", hue="arm", hue_order=order, units="seed", estimator=None,
                     lw=0.8, alpha=0.45, palette=palette, legend=False, ax=ax)
    sns.lineplot(data=data, x="step", y="loss", hue="arm", hue_order=order, ax=ax, palette=palette,
                 errorbar=None if few else t_interval, lw=2 if few else 1.5)  # legend in the tables' order
    scale = _loss_scale(ax, data.loss)
    ax.set_ylabel("task-normalised test loss" + (" (log scale)" if scale == "log" else ""))
    seeds = "one seed" if data.groupby("arm").seed.nunique().max() == 1 else (
        f"mean over seeds, {'thin: each seed' if few else '95% interval'}")
    title = f"Test loss during training ({seeds})"
    if c.grids:
        title += "\ngrids: the point chosen on validation" + (
            ", and the best that weights every task" if any(g.weighted_all for g in c.grids.values()) else "")
    if isinstance(c.at_step, int):  # where the tables read the curves
        ax.axvline(c.at_step, color="0.35", ls="--", lw=1, zorder=0)
        title += f"\ndashed: step {c.at_step}, where the tables compare the runs"
    ax.set_title(title)
    # Beside the axes: inside, a legend of many arms covered the curves' ends.
    ax.legend(title=None, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def verdict_over_steps(c: Comparison) -> plt.Figure | None:
    """GradNorm minus the grid's point chosen on validation at each evaluation step, with the
    paired difference's 95% interval: whether the verdict at the end holds earlier."""
    data = c.over_steps
    if data.step.nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.2))
    palette = arm_colours(c)
    several = data.gradnorm.nunique() > 1  # then coloured by GradNorm arm, else by grid
    for (gradnorm, versus), d in data.groupby(["gradnorm", "versus"], sort=False):
        # A GradNorm arm with several alphas: each step's chosen one, in the colour of the one chosen at the end.
        label = c.choices[gradnorm].chosen if gradnorm in c.choices else gradnorm
        colour = palette.get(label if several else versus, (0.3, 0.3, 0.3))
        ax.fill_between(d.step, d.difference_ci_low, d.difference_ci_high, color=colour, alpha=0.18, lw=0)
        name = f"{gradnorm if several else 'GradNorm'} − {versus}"
        ax.plot(d.step, d.mean_difference, color=colour, lw=1.6, label=name)
        significant = (d.p_value < 0.05).to_numpy()
        steps, means = d.step.to_numpy(), d.mean_difference.to_numpy()
        ax.scatter(steps[significant], means[significant], color=colour, s=22, zorder=3)
        ax.scatter(steps[~significant], means[~significant], facecolor="white", edgecolor=colour, s=22, zorder=3)
    ax.axhline(0, color="0.2", lw=0.8)
    if isinstance(c.at_step, int):
        ax.axvline(c.at_step, color="0.35", ls="--", lw=1, zorder=0)
    ax.set_xlabel("step")
    ax.set_ylabel("difference in task-normalised test loss")
    seeds = count(int(data.n.max()), "seed")
    chosen_there = sorted({c.choices[arm].what for arm in set(data.gradnorm) & set(c.choices)})
    alphas = f"; GradNorm's {' and '.join(chosen_there)} chosen there too" if chosen_there else ""
    ax.set_title(f"GradNorm minus the grid's point chosen on validation at each step\n{seeds}, 95% interval{alphas}"
                 "\nabove 0: the grid is lower; filled: paired t-test p < 0.05"
                 + (f"\ndashed: step {c.at_step}, where the tables compare the runs" if isinstance(c.at_step, int)
                    else ""))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


# Arms drawn as levels beside an arm's settings (their chosen one, where they have several).
_LEVEL_KINDS = ("grid", "equal", "static", "loss-scale", "uncertainty", "dwa", "rlw")


def setting_sensitivity(c: Comparison) -> plt.Figure | None:
    """Test loss against each setting an arm was trained at and chosen among on validation:
    GradNorm's alpha (the one hyperparameter the paper leaves to its user), an arm's learning
    rates (`network_lr`), or both (a line per alpha against the rate). A panel per arm; a GradNorm
    arm's static retrains beside it, each seed as a dot, the chosen setting starred, and the
    other arms as levels (at their chosen setting)."""
    if not c.choices:
        return None
    ok = c.runs[c.runs.status == "ok"]
    ok = ok.assign(alpha=pd.to_numeric(ok.variant.str.extract(r"(?:^|/)alpha=([^/]+)")[0], errors="coerce"),
                   lr=ok.lr if "lr" in ok else math.nan)
    sources = c.manifest.get("gradnorm_static_sources", {})
    colours = arm_colours(c)
    levels = c.main[c.main.kind.isin(_LEVEL_KINDS) & c.main.normalized_test_loss.notna()
                    & ~c.main.arm.isin(c.passed_over)]
    fig, axes = _panels(len(c.choices), 7, 4.6)
    for ax, (arm, choice) in zip(axes, c.choices.items()):
        chosen, what = choice.chosen_variant, choice.what
        x = "alpha" if what == "alpha" else "lr"
        for line_arm in [arm, *(s for s, source in sources.items() if source == arm)]:
            arm_runs = ok[(ok.arm == line_arm) & ok[x].notna()]
            colour = colours.get(f"{line_arm} ({chosen})", colours.get(line_arm, "k"))
            # Alpha and rate both varied: a line per alpha, told apart by its dashes.
            lines = (list(arm_runs.groupby("alpha", sort=True)) if x == "lr" and arm_runs.alpha.nunique() > 1
                     else [(None, arm_runs)] if len(arm_runs) else [])
            for k, (alpha, runs) in enumerate(lines):
                means = runs.groupby(x).normalized_test_loss.mean()
                name = line_arm if alpha is None else f"{line_arm}, alpha={alpha:g}"
                ax.plot(means.index, means.to_numpy(), marker="o", color=colour, lw=1.8,
                        ls=("-", "--", ":", "-.")[k % 4], label=name)
                ax.scatter(runs[x], runs.normalized_test_loss, s=10, color=colour, alpha=0.5)
            picked = arm_runs[arm_runs.variant == chosen]
            if line_arm == arm and not picked.empty:
                ax.scatter([picked[x].iloc[0]], [picked.normalized_test_loss.mean()], s=260, marker="*",
                           color=colour, edgecolors="k", zorder=5, label=f"{arm}: {what} chosen on validation")
        for row in levels.itertuples():
            if row.arm not in (choice.chosen, arm):
                ax.axhline(row.normalized_test_loss, color=colours.get(row.arm, "0.5"), ls="--", lw=1.2,
                           label=row.arm)
        values = ok[(ok.arm == arm)][x].dropna()
        positive = values[values > 0]
        if len(positive) and positive.max() / positive.min() >= 10:
            # Decades apart (0.01 to 10): on a linear axis the small values fall onto one point.
            # With alpha = 0 among them, linear up to the smallest positive one.
            if (values == 0).any():
                ax.set_xscale("symlog", linthresh=positive.min())
                ax.set_xlim(-0.25 * positive.min(), 1.4 * positive.max())
            else:
                ax.set_xscale("log")
            # A tick at each value trained, as written in the study ("0.12", not 1.2 x 10^-1).
            ax.set_xticks(sorted(values.unique()))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel("alpha" if x == "alpha" else "the network's learning rate (network_lr)")
        ax.set_ylabel("task-normalised test loss")
        against = "alpha" if x == "alpha" else "learning rate"
        ax.set_title(f"{arm}: test loss against {against} (mean over seeds; dots: each seed)")
    # One legend for every panel: each arm's lines, and the levels they share.
    entries: dict[str, object] = {}
    for ax in axes[:len(c.choices)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    handles, labels = list(entries.values()), list(entries)
    # Below the panels: the levels span the whole width, so inside no place is free of them.
    _legend_below(fig, handles, labels, ncol=3)
    return fig


def _weights(c: Comparison, label: str) -> list[float]:
    return list(c.main.set_index("arm").loc[label, "weights"])


def _markers(c: Comparison) -> list[tuple[str, list[float]]]:
    """Arms placed on grid figures: GradNorm (averaged weights), GradNorm static, equal; an arm
    that trained exactly as another is that arm's marker (see _legend_name)."""
    main = c.main[~c.main.kind.isin(["grid"]) & ~c.main.arm.isin(c.twins)]
    return [(row.arm, list(row.weights)) for row in main.itertuples()
            if row.kind in ("gradnorm", "gradnorm-static", "equal", "static", "loss-scale")
            and not any(math.isnan(w) for w in row.weights)]


def _legend_name(c: Comparison, label: str) -> str:
    """A marker's name in a legend, with the labels that trained exactly as it: "gradnorm =
    gradnorm-floor"."""
    return " = ".join([label, *(twin for twin, same in c.twins.items() if same == label)])


def _grid(c: Comparison, arm: str | None) -> tuple[str, GridSelection, pd.DataFrame]:
    """The grid arm a figure draws (the study's first by default), its summary and its points
    that trained. Where the points have not all finished the same seeds (a study still
    training), those the point was chosen on, and each point's test losses are its means over
    them, as the summary compares them: a point with only the easy seeds looked best."""
    arm = arm or next(iter(c.grids))
    grid = c.grids[arm]
    points = grid.points[grid.points.failed == 0]
    if not grid.shared_seeds:
        return arm, grid, points
    points = points[points.val_loss_on_shared_seeds.notna()].copy()
    on = c.runs[(c.runs.arm == arm) & (c.runs.status == "ok") & c.runs.seed.isin(grid.shared_seeds)]
    columns = ["normalized_test_loss", *(f"test_loss_{t}" for t in c.tasks)]
    means = on.groupby("variant")[columns].mean()
    for column in columns:
        points[column] = points.point.map(means[column])
    return arm, grid, points


def grid_landscape(c: Comparison, arm: str | None = None) -> plt.Figure | None:
    if not c.grids or len(c.tasks) not in (2, 3):
        return None
    arm, grid, points = _grid(c, arm)
    w = points[[f"weight_{t}" for t in c.tasks]].to_numpy()
    loss = points.normalized_test_loss.to_numpy()
    markers = _markers(c)
    colours = [arm_colours(c)[label] for label, _ in markers]
    if len(c.tasks) == 2:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        order = np.argsort(w[:, 0])
        ax.plot(w[order, 0], loss[order], "o-", color="0.35", ms=4, label=f"{arm} points")
        best = points[points.selected].iloc[0]
        ax.plot(best[f"weight_{c.tasks[0]}"], best.normalized_test_loss, "*", ms=16, color="gold",
                mec="k", label="chosen on validation")
        if grid.weighted_all:
            alt = points[points.point == grid.weighted_all].iloc[0]
            ax.plot(alt[f"weight_{c.tasks[0]}"], alt.normalized_test_loss, "*", ms=13, color="white",
                    mec="k", label="chosen on validation, all weights > 0")
        # Distinct dash patterns, so that lines at (nearly) one w_0 stay apart.
        patterns = itertools.cycle(["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))])
        for (label, weights), colour, dashes in zip(markers, colours, patterns):
            ax.axvline(weights[0], color=colour, ls=dashes, lw=1.6,
                       label=f"{_legend_name(c, label)} (w_0 = {weights[0]:.2f})")
        ax.set_xlabel(f"w_0 (weight of {c.tasks[0]}; w_1 = 2 - w_0)")
        ax.set_ylabel("task-normalised test loss")
        _loss_scale(ax, loss)
        ax.set_title("Grid landscape: test loss of every static weighting (mean over seeds)")
        # Beside the axes: inside, it hid the grid's curve where the arms' lines crowd.
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        return fig
    # T = 3: a heat map on the simplex (barycentric -> plane).
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])

    def xy(weights: Sequence[float]) -> np.ndarray:
        p = np.asarray(weights, dtype=float) / 3.0
        return p @ corners

    pts = xy(w)
    fig, ax = plt.subplots(figsize=(7.5, 7.2))
    # Colour bands hold equal shares of the points: on an even (or log) scale the boundary points,
    # several times worse, took most of the colours and left the interior, where the choice is
    # made, in one or two bands.
    levels = np.unique(np.quantile(loss, np.linspace(0, 1, 15)))
    if len(levels) < 2:  # every point alike
        levels = np.array([loss.min() - 0.5, loss.min() + 0.5])
    norm = matplotlib.colors.BoundaryNorm(levels, 256)
    # Shading interpolates over triangles of points: fewer than three, or points on one line (a
    # sampled grid of 1 or 2 trials, listed points), have none, and matplotlib raised ValueError.
    shaded = len(pts) >= 3 and np.linalg.matrix_rank(pts[1:] - pts[0], tol=1e-9) == 2
    if shaded:
        ax.tricontourf(pts[:, 0], pts[:, 1], loss, levels=levels, cmap="viridis_r", norm=norm)
    dots = ax.scatter(pts[:, 0], pts[:, 1], c=loss, cmap="viridis_r", norm=norm, s=18 if shaded else 80,
                      edgecolors="k", linewidths=0.3)
    cbar = fig.colorbar(dots, ax=ax, shrink=0.8, pad=0.08, spacing="uniform")
    cbar.set_ticks(levels.tolist())
    cbar.set_ticklabels([format_number(v) for v in levels], fontsize="small")
    cbar.set_label("task-normalised test loss (colour bands: equal numbers of points)")
    best = xy(grid.weights)
    ax.plot(*best, "*", ms=18, color="gold", mec="k", label=f"{arm}: chosen on validation")
    if grid.weighted_all:
        ax.plot(*xy(grid.weighted_all_weights), "*", ms=15, color="white", mec="k",
                label=f"{arm}: chosen on validation, all weights > 0")
    for (label, weights), colour, marker, size in zip(markers, colours, itertools.cycle("osD^vP"),
                                                      _nested_sizes(len(markers), 15, 7)):
        ax.plot(*xy(weights), marker, ms=size, color=colour, mec="k", label=_legend_name(c, label))
    for i, ((x, y), ha) in enumerate(zip(corners, ("left", "right", "center"))):
        ax.annotate(f"all weight on {c.tasks[i]}", (x, y), ha=ha,
                    va="top" if y == 0 else "bottom", fontsize="small",
                    xytext=(0, -6 if y == 0 else 6), textcoords="offset points")
    ax.plot(*np.vstack([corners, corners[:1]]).T, color="0.3", lw=1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_ylim(-0.12, math.sqrt(3) / 2 + 0.1)
    ax.set_title("Grid landscape on the weight simplex (mean over seeds)", pad=12)
    ax.legend(loc="upper center", fontsize="small", bbox_to_anchor=(0.5, 0.0), ncol=2)
    fig.tight_layout()
    return fig


def _correlations(x: np.ndarray, y: np.ndarray) -> str:
    if len(x) < 3:
        return f"{len(x)} point{'' if len(x) == 1 else 's'}, too few for a correlation"
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # SciPy warns and gives NaN
        return f"{len(x)} points, all at one {'distance' if np.ptp(x) == 0 else 'loss change'}: no correlation"
    r, p = sps.pearsonr(x, y)
    rho = sps.spearmanr(x, y).statistic
    # + 0.0 turns a rounded -0.00 into 0.00
    return f"Pearson r = {round(r, 2) + 0.0:.2f} (p = {p:.2g}), Spearman rho = {round(rho, 2) + 0.0:.2f}"


def _linear_then_log(ax: plt.Axes, values: np.ndarray, linear: float, axis: str = "y") -> None:
    """An axis linear within +-`linear` (wide, with round ticks) and logarithmic beyond, with
    a tick at every decade the values reach; a side whose values reach no decade gets a tick
    at its farthest value (else a point at -1.7 beside a linear range of +-1.3 had no tick
    nearer than -0.8)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("symlog", linthresh=linear, linscale=4)
    inner = [t for t in ticker.MaxNLocator(4).tick_values(max(min(values.min(), 0), -linear), linear)
             if abs(t) <= linear]
    outer: list[float] = []
    for sign, end in ((1, values.max()), (-1, -values.min())):
        if end > linear:
            decades = [10.0 ** k for k in range(math.ceil(math.log10(linear)), math.floor(math.log10(end)) + 1)]
            step = max(1, math.ceil(len(decades) / 3))  # at most 3 a side: six decades' labels ran together
            decades = decades[::-1][::step][::-1]  # the farthest kept
            outer += [sign * d for d in decades] or [sign * float(f"{end:.2g}")]
    # A linear tick close to an outer one (7.5 just below 10) printed over it: keep the outer one.
    if outer and len(inner) > 1:
        at = target.get_transform().transform  # data to the axis's symlog coordinate
        spacing = np.diff(at(np.array(inner[:2])))[0]
        outer_at = at(np.array(outer))
        inner = [t for t in inner if np.abs(outer_at - at(np.array([t]))).min() >= spacing / 2]
    target.set_ticks(sorted(set(inner + outer)))
    powers_of_ten = {t for t in outer if math.log10(abs(t)) == round(math.log10(abs(t)))}  # not a farthest value's tick
    target.set_major_formatter(ticker.FuncFormatter(functools.partial(
        _symlog_label, decades=frozenset(powers_of_ten) if _needs_powers(outer) else frozenset())))
    target.set_minor_locator(ticker.NullLocator())


def _symlog_label(value: float, _pos: int | None = None, decades: frozenset = frozenset()) -> str:
    """The linear part's ticks as plain numbers; the decades beyond as plain numbers too, or,
    where one reaches past 100000 (long runs of zeros are hard to count), all as powers of ten.

    >>> [_symlog_label(v, decades=frozenset({-1e6, -1e4, 100.0})) for v in (-1e6, -1e4, -2.5, 0, 100.0)]
    ['-10⁶', '-10⁴', '-2.5', '0', '10²']
    """
    return power_label(value) if value in decades else f"{value:g}"


def distance_to_gradnorm(c: Comparison, arm: str | None = None) -> plt.Figure | None:
    """The paper's Figure 6: each grid point's mean relative change in per-task test loss
    against GradNorm's, mean_i (L_i / L_i(GradNorm) - 1), against the L2 distance between its
    weights and GradNorm's time-averaged weights. Per task and then averaged, as the paper has
    it: the change in the summed normalised loss would weight each task by its share of it."""
    gradnorm = c.main[(c.main.kind == "gradnorm") & ~c.main.arm.isin(c.twins)]
    # An arm whose every run failed has no loss to measure the points' changes from: its panel
    # was empty, titled "Pearson r = nan".
    gradnorm = gradnorm[np.isfinite(gradnorm.normalized_test_loss.astype(float))]
    if not c.grids or gradnorm.empty:
        return None
    arm, grid, points = _grid(c, arm)
    columns = [f"test_loss_{t}" for t in c.tasks]
    fig, axes = _panels(len(gradnorm), 7, 4.6)
    for ax, row in zip(axes, gradnorm.itertuples()):
        own, losses = placing_means(c.runs, row.arm, grid, columns)  # on the seeds they share
        relative = losses.reindex(points.point).to_numpy(dtype=float) / own.to_numpy(dtype=float) - 1
        change = 100 * relative.mean(axis=1)
        placed = np.isfinite(change)  # a point without every seed the arm is placed on is left out
        panel = points[placed]
        change = change[placed]
        weights = panel[[f"weight_{t}" for t in c.tasks]].to_numpy()
        distance = np.linalg.norm(weights - np.asarray(row.weights), axis=1)
        # Points on the simplex's boundary leave a task untrained: often the far outliers, so
        # they are marked, and the correlations are also given without them (as in the paper,
        # whose grid drew its weights at random). The fitted line follows the paper's points
        # too: through the outliers it would predict losses below zero.
        interior = panel.all_weights_positive.to_numpy()
        boundary = ~interior
        fitted = interior if interior.sum() >= 3 else np.ones_like(interior)
        # Named in the legend: which points it follows changes with the grid.
        line = ("least squares over " + ("the points with all weights > 0" if fitted is interior else "all points")
                + " (band: 95 % bootstrap)")
        sns.regplot(x=distance[fitted], y=change[fitted], ax=ax, scatter=False, line_kws={"color": "C3"},
                    label=line, seed=0)  # its band is bootstrapped: the same band for the same runs
        inner = np.abs(change[interior]).max() if interior.any() else 0.0
        if boundary.any() and inner > 0 and np.abs(change).max() > 5 * inner:
            # Outliers hundreds of % away would flatten the paper's points into one line: linear
            # up to those points' range, logarithmic beyond.
            _linear_then_log(ax, change, 1.5 * inner)
        if interior.any():  # a legend entry for no points would promise what is not drawn
            ax.scatter(distance[interior], change[interior], s=16, color="C0", label="all weights > 0")
        title = _correlations(distance, change)
        if boundary.any():
            ax.scatter(distance[boundary], change[boundary], s=22, color="C1", marker="D",
                       label="a weight of 0 (that task's head never trains)")
            title = f"all points: {title}\nall weights > 0: {_correlations(distance[interior], change[interior])}"
        # The grid's rows in the tables, starred as on the landscape.
        for point, colour, label in ((grid.selected, "gold", "chosen on validation"),
                                     (grid.weighted_all, "white", "chosen on validation, all weights > 0")):
            at = (panel.point == point).to_numpy()
            if point and at.any():
                ax.scatter(distance[at], change[at], s=220, marker="*", color=colour, edgecolors="k", zorder=3,
                           label=f"{arm}: {label}")
        ax.set_title(title)
        ax.axhline(0, color="k", lw=0.8)
        # Wrapped: with a long arm name it would run into the next panel's label.
        same = _same_runs(c, row.arm)
        ax.set_xlabel(textwrap.fill(f"L2 distance between grid weights and {row.arm}'s averaged weights"
                                    + (f" ({same})" if same else ""), 55))
        ax.set_ylabel(textwrap.fill(f"mean change in per-task test loss vs {row.arm} (%)", 32))
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        # Below the panels: inside, the points that weight a task 0 fill the upper half, and
        # matplotlib's best place for a legend still covered some of them.
        _legend_below(fig, handles, labels, ncol=2)
    else:
        fig.tight_layout()
    return fig


def _pareto_mask(values: np.ndarray) -> np.ndarray:
    """Points not dominated (every loss <= and one <) by another point."""
    n = len(values)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(values <= values[i], axis=1) & np.any(values < values[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(c: Comparison, arm: str | None = None) -> plt.Figure | None:
    if not c.grids or len(c.tasks) < 2:
        return None
    arm, grid, points = _grid(c, arm)
    losses = points[[f"test_loss_{t}" for t in c.tasks]].to_numpy()
    front = _pareto_mask(losses)
    # The point the tables call the grid: starred, as on the landscape (it is not among `others`).
    chosen = points.selected.to_numpy(dtype=bool)
    pairs = task_pairs(len(c.tasks))
    per_task = c.per_task.pivot(index="arm", columns="task", values="test_loss")
    per_task = per_task.reindex(list(dict.fromkeys(c.per_task.arm)))  # the tables' order, not pivot's sorted one
    # An arm whose every run failed has no losses to draw, and so no legend entry either.
    others = [lb for lb in per_task.index if lb != arm and per_task.loc[lb].notna().any()]
    colours = arm_colours(c)
    # Points that weight a task 0 never train its head: their loss on it is many times the
    # others', and drawn to scale they squeezed every arm into one corner. Each panel's axes then
    # frame the points that weight both of its tasks, and the arms, and say how many lie beyond.
    weights = points[[f"weight_{t}" for t in c.tasks]].to_numpy(dtype=float)
    drawn = points_seeds(c.runs, grid)  # as `_grid` draws them
    fig, axes = _panels(len(pairs), 5.4, 4.8)
    for ax, (i, j) in zip(axes, pairs):
        ax.scatter(losses[~front, i], losses[~front, j], s=14, color="0.65", label=f"{arm} points")
        ax.scatter(losses[front, i], losses[front, j], s=30, color="k", label="Pareto front (all tasks)")
        ax.scatter(losses[chosen, i], losses[chosen, j], s=260, marker="*", color="gold", edgecolors="k",
                   zorder=3, label=f"{arm}: chosen on validation")
        for label, size in zip(others, _nested_sizes(len(others), 150, 70)):
            ax.scatter(per_task.loc[label, c.tasks[i]], per_task.loc[label, c.tasks[j]], s=size,
                       marker="X", color=colours[label], edgecolors="k", label=_seeds_drawn(c, label, drawn))
        arms_xy = per_task.loc[others, [c.tasks[i], c.tasks[j]]].to_numpy(dtype=float)
        focus = _focus_box(losses[:, [i, j]], (weights[:, [i, j]] > 0).all(axis=1), arms_xy)
        for k, (axis, task) in enumerate((("x", c.tasks[i]), ("y", c.tasks[j]))):
            shown = np.r_[losses[:, (i, j)[k]], arms_xy[:, k]]
            if focus is not None:
                shown = shown[(shown >= focus[k][0]) & (shown <= focus[k][1])]
            scale = _loss_scale(ax, shown, axis=axis)
            if focus is not None:
                limits = focus[k]
                if scale == "log":
                    # A linear pad reaches below zero when the frame spans decades (QM9): pad by
                    # the same ratio at both ends instead.
                    shown = shown[shown > 0]
                    ratio = (shown.max() / shown.min()) ** FOCUS_PAD
                    limits = (shown.min() / ratio, shown.max() * ratio)
                (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)
            (ax.set_xlabel if axis == "x" else ax.set_ylabel)(f"test loss {task}")
        if focus is not None:
            beyond = ~_inside(losses[:, [i, j]], (ax.get_xlim(), ax.get_ylim()))  # as drawn
            ax.set_title(_beyond_the_axes(int(beyond.sum()), bool((beyond & chosen).any())),
                         fontsize="small", color="0.35")
    handles, labels = axes[0].get_legend_handles_labels()
    every = math.comb(len(c.tasks), 2)
    fig.suptitle("Per-task test losses: the grid's Pareto front and where the other arms land"
                 + (f"\n({len(pairs)} of the {every} pairs of tasks; every task's losses are in per_task.csv)"
                    if len(pairs) < every else ""))
    if len(pairs) % 2 and len(pairs) > 1:  # the legend takes the empty panel's place
        spare = axes[len(pairs)]
        spare.set_visible(True)
        spare.axis("off")
        spare.legend(handles, labels, loc="center", fontsize="small")
        fig.tight_layout()
    else:
        _legend_below(fig, handles, labels, ncol=4)
    return fig


def _seeds_drawn(c: Comparison, label: str, grid_seeds: list[int]) -> str:
    """An arm's name in the Pareto legend, with its seeds where they are not the grid points'
    (a seed of it failed): each marker is a mean over its own seeds, and the grid can be drawn
    only once, so the reader is told that a hard seed may be missing from one side."""
    seeds = sorted(set(c.runs[(c.runs.label == label) & (c.runs.status == "ok")].seed.astype(int)))
    if not seeds or seeds == grid_seeds:
        return label
    return f"{label} ({seeds_words(seeds)}; the points: {seeds_words(grid_seeds)})"


PARETO_PANELS = 6


def task_pairs(n_tasks: int, most: int = PARETO_PANELS) -> list[tuple[int, int]]:
    """The pairs of tasks the Pareto figure draws: all of them up to `most`; beyond, first pairs
    that put every task in a panel (the first three pairs of ten tasks showed task 0 against
    tasks 1 to 3, and tasks 4 to 9 nowhere), then the others in order.

    >>> task_pairs(3)
    [(0, 1), (0, 2), (1, 2)]
    >>> task_pairs(5)
    [(0, 1), (2, 3), (3, 4), (0, 2), (0, 3), (0, 4)]
    >>> task_pairs(10)
    [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (0, 2)]
    """
    every = list(itertools.combinations(range(n_tasks), 2))
    if len(every) <= most:
        return every
    covering = [(i, i + 1) for i in range(0, n_tasks - 1, 2)] + ([(n_tasks - 2, n_tasks - 1)] if n_tasks % 2 else [])
    return [*covering, *(pair for pair in every if pair not in covering)][:most]


def _beyond_the_axes(outside: int, chosen_among: bool) -> str:
    """A Pareto panel's note on the grid points its axes leave out (the legend's star is the
    grid's chosen point).

    >>> _beyond_the_axes(1, False)
    '1 grid point with a weight of 0 lies beyond the axes'
    >>> _beyond_the_axes(1, True)
    'the chosen point ★ (a weight of 0) lies beyond the axes'
    >>> _beyond_the_axes(21, True)
    '21 grid points with a weight of 0 lie beyond the axes, ★ among them'
    """
    if outside == 1 and chosen_among:
        return "the chosen point ★ (a weight of 0) lies beyond the axes"
    verb = "lies" if outside == 1 else "lie"
    return (f"{count(outside, 'grid point')} with a weight of 0 {verb} beyond the axes"
            + (", ★ among them" if chosen_among else ""))


def _inside(xy: np.ndarray, box: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    (x0, x1), (y0, y1) = box
    return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


FOCUS_PAD = 0.08  # a framed panel's margin beyond its outermost points, as a fraction of its span


def _focus_box(grid_xy: np.ndarray, trained: np.ndarray,
               arms_xy: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Axis limits framing the grid points that train both tasks drawn (`trained`) and the other
    arms, or None when every point fits at less than three times that frame's width in both
    directions."""
    kept = np.r_[grid_xy[trained], arms_xy]
    kept = kept[np.isfinite(kept).all(axis=1)]
    everything = np.r_[grid_xy, arms_xy]
    everything = everything[np.isfinite(everything).all(axis=1)]
    if len(kept) < 2 or trained.all():
        return None
    low, high = kept.min(axis=0), kept.max(axis=0)
    span = np.maximum(high - low, 1e-3 * np.abs(high))
    if ((everything.max(axis=0) - everything.min(axis=0)) < 3 * span).all():
        return None
    pad = FOCUS_PAD * span
    return (low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1])


def overfitting_gaps(c: Comparison) -> plt.Figure | None:
    runs = representatives(c.runs[c.runs.status == "ok"], c.grids)  # the gaps are in the runs table: no record needed
    if runs.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.6 * runs.label.nunique() + 1.8))
    few = _fewest_seeds(runs, "label") < INTERVAL_MIN_SEEDS
    order = _table_order(c, runs.label)
    sns.barplot(data=runs, y="label", x="normalized_overfitting_gap", errorbar=None if few else t_interval,
                order=order, hue="label", hue_order=order, palette=arm_colours(c), legend=False, saturation=1,
                alpha=0.6, ax=ax)
    # The points' jitter comes from numpy's global generator: seeded here, and left as it was, so
    # that the same runs draw the same figure.
    state = np.random.get_state()
    np.random.seed(0)
    try:
        sns.stripplot(data=runs, y="label", x="normalized_overfitting_gap", order=order, color="k", size=5, ax=ax)
    finally:
        np.random.set_state(state)
    ax.axvline(0, color="k", lw=0.8)
    gaps = runs.normalized_overfitting_gap.to_numpy(dtype=float)
    typical = np.quantile(np.abs(gaps), 0.75)
    if typical > 0 and np.abs(gaps).max() > 20 * typical:
        # A run whose loss ran away (finite, and short of the divergence rule) put every other arm at zero.
        _linear_then_log(ax, gaps, 1.5 * typical, axis="x")
    ax.set_xlabel("overfitting gap: task-normalised test minus train loss (per seed, and mean"
                  + ("" if few else " with 95% interval") + ")")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


# Each draws its figure from a comparison (and a grid arm's name, for PER_GRID), or None when it
# has nothing to show.
FIGURES: list[tuple[str, str, Callable[..., plt.Figure | None]]] = [
    ("weights", "Task weights of the adaptive methods over training", weight_trajectories),
    ("norms", "GradNorm's gradient norms at W against its targets", gradient_norms),
    ("curves", "Test loss during training", test_loss_curves),
    ("over-steps", "GradNorm against the grid over training", verdict_over_steps),
    ("settings", "Test loss against the settings chosen on validation (GradNorm's alpha, an arm's learning rate)",
     setting_sensitivity),
    ("landscape", "The grid's landscape", grid_landscape),
    ("distance", "Per-task test loss against distance to GradNorm's weights", distance_to_gradnorm),
    ("pareto", "Pareto front of per-task test losses", pareto_front),
    ("gaps", "Overfitting gap per arm", overfitting_gaps),
]


# Figures of one grid arm: a study with several grids (an exhaustive one and a TPE one, say)
# gets one of each per grid.
PER_GRID = {"landscape", "distance", "pareto"}


def all_figures(c: Comparison) -> Iterator[tuple[str, str, plt.Figure]]:
    for figure_id, title, draw in FIGURES:
        drawn: Iterable[tuple[str, str, plt.Figure | None]]
        if figure_id in PER_GRID and len(c.grids) > 1:
            drawn = ((f"{figure_id}-{arm}", f"{title} ({arm})", draw(c, arm)) for arm in c.grids)
        else:
            drawn = [(figure_id, title, draw(c))]
        for shown_id, shown_title, fig in drawn:
            if fig is not None:
                yield shown_id, shown_title, fig
