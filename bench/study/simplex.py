"""Points on the weight simplex {w : w_i >= 0, sum_i w_i = T}.

Exhaustive grids: a resolution r (with 1/r = n an integer) gives every w = T * k / n with k a
vector of non-negative integers summing to n; that is C(n + T - 1, T - 1) points (stars and
bars): T = 2 at r = 0.05 gives 21, T = 3 at r = 0.1 gives 66, T = 4 at r = 0.05 gives 1,771.

Sampled grids: an Optuna sampler proposes a point u of the unit cube [0, 1]^(T-1), mapped to the
simplex by stick breaking with Beta(1, T-1-k) inverse CDFs:
    b_k = 1 - (1 - u_k)^(1 / (T - 1 - k)),  p_k = b_k * (1 - p_0 - ... - p_{k-1}),
    p_{T-1} = what remains,  w = T * p.
This map is a bijection from the cube's interior to the simplex's and carries the uniform
distribution on the cube to the uniform distribution on the simplex (Dirichlet(1, ..., 1)), so
a random or quasi-random sampler covers the simplex evenly and TPE / CMA-ES search a box with no
constraint, instead of T free numbers renormalised after the fact (which over-samples the
centre). The paper drew its grid that way (T uniform weights, renormalised to sum to T), so
that map is kept too, as a named option (`renormalised_cube_to_simplex`).

>>> simplex_grid(2, 0.5)
[(2.0, 0.0), (1.0, 1.0), (0.0, 2.0)]
>>> len(simplex_grid(3, 0.1)), grid_size(3, 0.1), grid_size(4, 0.05)
(66, 66, 1771)
>>> [round(w, 4) for w in cube_to_simplex([0.5, 0.5], 3)]  # the cube's centre
[0.8787, 1.0607, 1.0607]
>>> [round(u, 4) for u in simplex_to_cube(cube_to_simplex([0.2, 0.7, 0.9], 4))]
[0.2, 0.7, 0.9]
>>> renormalised_cube_to_simplex([0.5, 0.25, 0.25], 3)  # the paper's map: T numbers, rescaled
(1.5, 0.75, 0.75)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def grid_divisions(resolution: float) -> int:
    """n = 1 / resolution, which must be (close to) a whole number."""
    if not 0 < resolution <= 1:
        raise ValueError("resolution must be in (0, 1]")
    n = round(1 / resolution)
    if abs(n * resolution - 1) > 1e-6:
        raise ValueError(f"1 / resolution must be a whole number, got 1 / {resolution} = {1 / resolution:.4g}")
    return n


def grid_size(tasks: int, resolution: float) -> int:
    """The number of points of the exhaustive grid: C(n + T - 1, T - 1)."""
    n = grid_divisions(resolution)
    return math.comb(n + tasks - 1, tasks - 1)


def simplex_grid(tasks: int, resolution: float) -> list[tuple[float, ...]]:
    """Every point T * k / n of the regular grid, in lexicographic order of k (descending)."""
    n = grid_divisions(resolution)
    points = []
    # Stars and bars: choose T - 1 bar positions among n + T - 1 slots.
    for bars in itertools.combinations(range(n + tasks - 1), tasks - 1):
        edges = (-1,) + bars + (n + tasks - 1,)
        counts = [edges[i + 1] - edges[i] - 1 for i in range(tasks)]
        points.append(tuple(tasks * c / n for c in counts))
    return sorted(points, reverse=True)


def cube_to_simplex(u: Sequence[float], tasks: int) -> tuple[float, ...]:
    """Map u in [0, 1]^(T-1) to weights on the simplex sum w = T (uniform to uniform)."""
    if len(u) != tasks - 1:
        raise ValueError(f"expected {tasks - 1} coordinates, got {len(u)}")
    remaining, parts = 1.0, []
    for k, uk in enumerate(u):
        b = 1.0 - (1.0 - min(max(uk, 0.0), 1.0)) ** (1.0 / (tasks - 1 - k))
        parts.append(b * remaining)
        remaining -= parts[-1]
    parts.append(max(remaining, 0.0))
    return tuple(tasks * p for p in parts)


def renormalised_cube_to_simplex(u: Sequence[float], tasks: int) -> tuple[float, ...]:
    """Map u in [0, 1]^T to weights on the simplex by rescaling: w = T * u / sum(u), the paper's
    grid (Section 5.3: weights "sampled uniformly and renormalised"). Not uniform on the simplex:
    it crowds the centre and rarely comes near a weight of 0. The cube's corner u = 0, where the
    rescaling has no limit, gives equal weights."""
    if len(u) != tasks:
        raise ValueError(f"expected {tasks} coordinates, got {len(u)}")
    clamped = [min(max(uk, 0.0), 1.0) for uk in u]
    if sum(clamped) <= 0.0:
        return (1.0,) * tasks
    return normalise(clamped)


def simplex_to_cube(weights: Sequence[float]) -> tuple[float, ...]:
    """The inverse of `cube_to_simplex` (for points in the simplex's interior)."""
    tasks = len(weights)
    p = [w / sum(weights) for w in weights]
    remaining, u = 1.0, []
    for k in range(tasks - 1):
        b = p[k] / remaining if remaining > 0 else 0.0
        u.append(1.0 - (1.0 - b) ** (tasks - 1 - k))
        remaining -= p[k]
    return tuple(u)


def normalise(weights: Sequence[float]) -> tuple[float, ...]:
    """Rescale non-negative weights to sum to T."""
    total = sum(weights)
    return tuple(len(weights) * w / total for w in weights)
