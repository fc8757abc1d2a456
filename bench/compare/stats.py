"""Statistics over seeds: intervals, ranks among grid points, distances and paired tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from bench.formatting import count


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample standard deviation and a Student-t confidence interval of the mean."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Summary(mean, math.nan, math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


@dataclass(frozen=True)
class Standing:
    """Where a value falls among the grid points' values (lower is better)."""

    rank: int  # 1 + the number of grid points strictly better
    n_points: int
    n_better: int  # grid points with a strictly lower loss
    percentile: float  # % of grid points strictly worse

    def as_dict(self) -> dict:
        return asdict(self)


def standing(value: float, grid_values: Sequence[float]) -> Standing:
    if math.isnan(value):  # every comparison with NaN is false: it would rank first
        raise ValueError("a NaN value has no standing among the grid points")
    grid = np.asarray(grid_values, dtype=float)
    better = int((grid < value).sum())
    worse = int((grid > value).sum())
    return Standing(rank=better + 1, n_points=len(grid), n_better=better,
                    percentile=100.0 * worse / len(grid) if len(grid) else math.nan)


def l2_distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))


@dataclass(frozen=True)
class Paired:
    """A paired comparison of two arms over the seeds both finished (a - b; lower is better)."""

    n: int
    wins: int  # seeds where a is lower than b
    losses: int  # seeds where a is higher than b (the rest are ties)
    mean_a: float
    mean_b: float
    mean_difference: float
    # The t-test's 95 % confidence interval of the mean difference: how large a difference these
    # seeds leave possible, which "does not differ significantly" alone does not say.
    difference_ci_low: float
    difference_ci_high: float
    p_value: float  # two-sided paired t-test
    wilcoxon_p: float  # two-sided Wilcoxon signed-rank test (exact for small n)
    effect_size: float  # Cohen's d_z: mean difference / sd of the differences

    def as_dict(self) -> dict:
        return asdict(self)


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Compare per-seed values of two arms, pairing by seed."""
    seeds = sorted(s for s in set(a) & set(b)
                   if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s]))
    x = np.asarray([a[s] for s in seeds], dtype=float)
    y = np.asarray([b[s] for s in seeds], dtype=float)
    n = len(seeds)
    if n == 0:
        return Paired(0, 0, 0, *[math.nan] * 8)
    diff = x - y
    p_t = p_w = d = low = high = math.nan
    if n >= 2:
        sd = float(diff.std(ddof=1))
        if sd > 0:
            test = stats.ttest_rel(x, y)
            p_t, d = float(test.pvalue), float(diff.mean() / sd)
            low, high = map(float, test.confidence_interval(0.95))
        else:  # the same difference on every seed: an interval of no width
            low = high = float(diff.mean())
            if diff.mean() != 0:
                p_t, d = 0.0, math.copysign(math.inf, float(diff.mean()))
        if np.any(diff != 0):
            p_w = float(stats.wilcoxon(x, y).pvalue)
    return Paired(n=n, wins=int((diff < 0).sum()), losses=int((diff > 0).sum()),
                  mean_a=float(x.mean()), mean_b=float(y.mean()), mean_difference=float(diff.mean()),
                  difference_ci_low=low, difference_ci_high=high, p_value=p_t, wilcoxon_p=p_w, effect_size=d)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of m p-values (family-wise error): the smallest
    times m, the next times m - 1, and so on, kept non-decreasing and at most 1. A NaN (no test
    was possible) stays NaN and is not counted in m.

    >>> holm([0.01, 0.04, 0.03, math.nan])  # m = 3: 0.01 x 3, then max(0.03 x 2, 0.04 x 1)
    array([0.03, 0.06, 0.06,  nan])
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled)) if len(order) else scaled
    return adjusted


def significant(value: float, digits: int = 4) -> str:
    """`value` to `digits` significant digits with its trailing zeros: 2.400 next to 2.478, not
    2.4, which reads as a coarser figure. Whole numbers stay whole up to a million (12346, not
    1.235e+04); beyond, a diverged run's 321065144 reads better as 3.211e+08.

    >>> significant(2.4), significant(2.47849), significant(12345.6), significant(321065144)
    ('2.400', '2.478', '12346', '3.211e+08')
    """
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    if 10 ** (digits - 1) <= abs(value) < 1e6:
        return f"{value:.0f}"
    rounded = float(f"{value:.{digits}g}")  # rounding first: 9.9996 -> 10.00, not 10.000
    if not 1e-4 <= abs(rounded) < 1e6:
        return f"{rounded:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def telling_apart(values: Sequence[float], digits: int = 4, most: int = 10) -> int:
    """The significant digits, from `digits` up to `most`, that print different values differently:
    α's whose validation losses agree to six digits all read 2.72760, and the choice among them
    looked arbitrary.

    >>> telling_apart([2.7276012, 2.7276047, 2.7276012]), telling_apart([1.05, 1.06, float("nan"), float("nan")])
    (7, 4)
    """
    finite = [v for v in values if math.isfinite(v)]  # NaN prints as nan however many digits
    distinct = len(set(finite))
    return next((d for d in range(digits, most + 1) if len({significant(v, d) for v in finite}) == distinct), most)


def versus(a: float, b: float, digits: int = 4) -> str:
    """"a vs b", each to `digits` significant digits, or more (up to 7) where that many would
    print two different numbers alike: "1.860 vs 1.860" under the verb "beats" reads as an error.

    >>> versus(2.4, 2.47849), versus(1.86012, 1.86049), versus(1.86, 1.86)
    ('2.400 vs 2.478', '1.8601 vs 1.8605', '1.860 vs 1.860')
    """
    d = telling_apart([a, b], digits, most=7)
    return f"{significant(a, d)} vs {significant(b, d)}"


def difference(result: Paired) -> str:
    """The mean difference a - b with its 95 % interval (two seeds or more), signed: "does not differ significantly"
    with three seeds can hide a difference of a few per cent (GradNorm static against GradNorm in
    the default study: -0.075 to +0.057 on 2.47), and the interval says how large.

    >>> from types import SimpleNamespace as R
    >>> difference(R(mean_difference=0.0626, difference_ci_low=0.0441, difference_ci_high=0.0811))
    'difference +0.063, 95% CI +0.044 to +0.081'
    >>> difference(R(mean_difference=-0.0058, difference_ci_low=-0.0211, difference_ci_high=0.00936))
    'difference -0.0058, 95% CI -0.021 to +0.0094'
    >>> difference(R(mean_difference=0.0105, difference_ci_low=0.0102, difference_ci_high=0.0108))  # 2 digits: alike
    'difference +0.0105, 95% CI +0.0102 to +0.0108'
    >>> difference(R(mean_difference=0.1, difference_ci_low=0.1, difference_ci_high=0.1))
    'difference +0.10 on every seed'
    """
    mean, low, high = result.mean_difference, result.difference_ci_low, result.difference_ci_high
    if low == high:
        return f"difference {_signed(mean, 2)} on every seed"
    d = telling_apart([low, mean, high], 2, most=4)
    return f"difference {_signed(mean, d)}, 95% CI {_signed(low, d)} to {_signed(high, d)}"


def _signed(value: float, digits: int) -> str:
    return ("+" if value > 0 else "") + significant(value, digits)


# Below this many seeds that differ, the exact two-sided signed-rank p cannot fall under 0.05
# (one sign on all five: 2 / 2^5 = 0.0625), so its disagreeing with the t-test says nothing.
RANK_TEST_MIN_SEEDS = 6


def rank_test_disagrees(wins: int, losses: int, p_value: float, wilcoxon_p: float) -> bool:
    """Whether the Wilcoxon signed-rank test and the paired t-test read a comparison differently at
    the 5 % level. A seed far off (a run that nearly diverged) widens the t-test's p even where every
    seed differs the same way, and ranks do not feel how far off it is; so the verdicts, which the
    t-test decides, say where the ranks disagree.

    >>> rank_test_disagrees(10, 0, 0.21, 0.002), rank_test_disagrees(10, 0, 0.01, 0.002)
    (True, False)
    >>> rank_test_disagrees(5, 0, 0.01, 0.0625)  # five seeds: ranks can never reach 0.05
    False
    """
    if wins + losses < RANK_TEST_MIN_SEEDS or math.isnan(p_value) or math.isnan(wilcoxon_p):
        return False
    return (p_value < 0.05) != (wilcoxon_p < 0.05)


def _p(result: Paired) -> str:
    p = result.p_value
    if math.isnan(p):
        return "no test (too few seeds)" if result.n < 2 else "no test (equal on every seed)"
    words = f"paired t-test p = {p:.2g}" if p >= 1e-4 else "paired t-test p < 0.0001"
    if rank_test_disagrees(result.wins, result.losses, p, result.wilcoxon_p):
        words += f", though Wilcoxon signed-rank p = {result.wilcoxon_p:.2g}"
    return words


def describe(a: str, b: str, result: Paired, b_detail: str = "") -> str:
    """A plain sentence that describes and claims nothing: 'GradNorm has a lower test loss than
    the best of 66 grid points on 3/3 seeds (...)', with the test for the reader to weigh."""
    if result.n == 0:
        return f"{a} and {b} share no finished seed: no comparison."
    effect = "" if math.isnan(result.effect_size) else f", effect size d = {significant(result.effect_size, 2)}"
    # Said from the side that wins more seeds: "lower ... on 0/3 seeds" reads as a riddle.
    # More seeds one way, the mean the other (one seed far off): said, or the sentence misleads.
    if result.wins > result.losses:
        outcome = (f"has a lower test loss than {b}{b_detail} on {result.wins}/{result.n} seeds"
                   + (", though a higher mean" if result.mean_difference > 0 else ""))
    elif result.losses > result.wins:
        outcome = (f"has a higher test loss than {b}{b_detail} on {result.losses}/{result.n} seeds"
                   + (", though a lower mean" if result.mean_difference < 0 else ""))
    else:
        outcome = (f"is level with {b}{b_detail}, lower on {result.wins} and higher on {result.losses} "
                   f"of {count(result.n, 'seed')}")
    return (f"{a} {outcome} (mean task-normalised test loss "
            f"{versus(result.mean_a, result.mean_b)}, {difference(result) + ', ' if result.n > 1 else ''}"
            f"{_p(result)}{effect}).")
