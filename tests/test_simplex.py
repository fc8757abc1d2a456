"""The weight simplex's invariants: every grid point and every sampled point is a set of task
weights (non-negative, summing to T), the grid holds each point once, and a uniformly sampled
cube lands uniformly on the simplex, so that a random sampler searches every weighting alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from bench.study.simplex import (
    cube_to_simplex,
    grid_divisions,
    grid_size,
    normalise,
    renormalised_cube_to_simplex,
    simplex_grid,
    simplex_to_cube,
)


@settings(max_examples=60, deadline=None)
@given(tasks=st.integers(1, 4), divisions=st.integers(1, 12))
def test_the_grid_holds_every_point_of_steps_t_over_n_once(tasks, divisions):
    grid = simplex_grid(tasks, 1 / divisions)
    assert len(grid) == len(set(grid)) == grid_size(tasks, 1 / divisions) == math.comb(divisions + tasks - 1, tasks - 1)
    for point in grid:
        assert len(point) == tasks and min(point) >= 0 and sum(point) == pytest.approx(tasks)
        steps = [w * divisions / tasks for w in point]  # each weight a whole number of steps T / n
        assert steps == pytest.approx([round(s) for s in steps], abs=1e-9)
    assert grid == sorted(grid, reverse=True)
    # every corner is a point: one task alone (a bound of the search), and equal weights when n allows
    assert all(tuple(float(tasks) if i == j else 0.0 for j in range(tasks)) in grid for i in range(tasks))
    if divisions % tasks == 0:
        assert (1.0,) * tasks in grid


@pytest.mark.parametrize("resolution", [0.0, -0.1, 1.5, 0.3, 0.15])
def test_a_resolution_that_splits_no_whole_number_of_steps_is_refused(resolution):
    with pytest.raises(ValueError, match="resolution"):
        grid_divisions(resolution)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(lambda t: st.lists(st.floats(0, 1), min_size=t - 1, max_size=t - 1)))
def test_any_point_of_the_cube_is_a_set_of_task_weights(u):
    tasks = len(u) + 1
    weights = cube_to_simplex(u, tasks)
    assert len(weights) == tasks and min(weights) >= 0 and sum(weights) == pytest.approx(tasks)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 6).flatmap(lambda t: st.lists(st.floats(0.01, 0.99), min_size=t - 1, max_size=t - 1)))
def test_the_cube_and_the_simplex_interior_map_one_to_one(u):
    weights = cube_to_simplex(u, len(u) + 1)
    assert simplex_to_cube(weights) == pytest.approx(u, abs=1e-7)
    assert simplex_to_cube([3 * w for w in weights]) == pytest.approx(u, abs=1e-7)  # any scale: its shares
    assert normalise([3 * w for w in weights]) == pytest.approx(weights)


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_a_uniform_cube_lands_uniformly_on_the_simplex(tasks):
    """Uniform on the simplex is Dirichlet(1, ..., 1): each share w_i / T is Beta(1, T - 1), the
    last (what the stick breaking leaves) as much as the first. Renormalising T uniform numbers
    instead, the usual shortcut, crowds the centre and fails this test."""
    u = np.random.default_rng(7).random((4000, tasks - 1))
    shares = np.array([cube_to_simplex(row, tasks) for row in u]) / tasks
    for i in range(tasks):
        assert stats.kstest(shares[:, i], stats.beta(1, tasks - 1).cdf).pvalue > 1e-3, i
    if tasks > 2:  # the shortcut, for contrast
        shortcut = np.random.default_rng(7).random((4000, tasks))
        shortcut /= shortcut.sum(axis=1, keepdims=True)
        assert stats.kstest(shortcut[:, 0], stats.beta(1, tasks - 1).cdf).pvalue < 1e-6


def test_cube_coordinates_must_be_one_fewer_than_the_tasks():
    with pytest.raises(ValueError, match="expected 2 coordinates, got 1"):
        cube_to_simplex([0.5], 3)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(lambda t: st.lists(st.floats(0, 1), min_size=t, max_size=t)))
@example([0.0, 5e-324])  # CI's draw: a sum too small to halve, not zero
@example([0.0, 0.0, 0.0])
def test_the_papers_map_rescales_the_cube_point_to_sum_to_t(u):
    tasks = len(u)
    weights = renormalised_cube_to_simplex(u, tasks)
    assert len(weights) == tasks and min(weights) >= 0 and sum(weights) == pytest.approx(tasks)
    if sum(u) == 0:  # the cube's corner 0, where the rescaling has no limit: equal weights
        assert weights == (1.0,) * tasks
    else:  # each weight in proportion to its coordinate, even next to the corner (u = (0, 5e-324))
        assert weights == pytest.approx([tasks * x / sum(u) for x in u])
    if sum(u) > 1e-300:  # whatever the cube point's scale (halving a subnormal can round it to 0)
        assert renormalised_cube_to_simplex([x / 2 for x in u], tasks) == pytest.approx(weights)


def test_the_papers_map_draws_two_weights_as_the_ratio_of_two_uniforms():
    """Two uniform numbers renormalised: the share t = u0 / (u0 + u1) has the CDF t / (2 (1 - t))
    below 1/2 and 1 - (1 - t) / (2 t) above, twice as dense at 1/2 as uniform and half as dense
    at the ends. Stick breaking's share would be uniform, and fails this test."""
    def cdf(t: np.ndarray) -> np.ndarray:
        return np.where(t <= 0.5, t / (2 * (1 - t)), 1 - (1 - t) / (2 * t))

    u = np.random.default_rng(3).random((4000, 2))
    shares = np.array([renormalised_cube_to_simplex(row, 2)[0] / 2 for row in u])
    assert stats.kstest(shares, cdf).pvalue > 1e-3
    uniform = np.array([cube_to_simplex(row[:1], 2)[0] / 2 for row in u])
    assert stats.kstest(uniform, cdf).pvalue < 1e-6


def test_the_papers_map_takes_one_coordinate_per_task():
    with pytest.raises(ValueError, match="expected 3 coordinates, got 2"):
        renormalised_cube_to_simplex([0.5, 0.5], 3)
