"""The time a study has left, priced stack by stack (bench.study.time_left), on a hand-driven clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.study.time_left import TimeLeft


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def train(timer: TimeLeft, clock: Clock, size: int, per_step: float, setup: float = 0.5, tail: float = 0.25,
          until: int | None = None) -> None:
    """A stack of `size` runs: `setup` seconds before its first step, `per_step` a step, reported
    every step, and `tail` seconds after its last (the final evaluation)."""
    timer.start(size)
    clock.now += setup
    for step in range(1, (until or timer.steps) + 1):
        clock.now += per_step
        timer.step(step)
    if until is None:
        clock.now += tail
        timer.finish()


def test_the_small_stacks_trained_first_do_not_set_the_pace_of_the_large_ones():
    """The default study's shape: a wave of GradNorm's 3 runs and 30 grid runs, then 168 grid runs
    (5 stacks of 33 and one of 3) and three arms of 3 runs. 3 runs cost 0.01 s a step and 30 runs
    0.04 s, so the line through them is a = 0.00667, b = 0.00111 a run: 33 runs cost 0.04333 s a
    step. A stack's own time outside its paced steps (setup, its first step, its last evaluation)
    is 0.76 s at 3 runs and 0.79 s at 30. After both stacks, the first stack's pace (3 runs in
    1.75 s) would give the 177 runs left 103 s, where their stacks cost 5 x (0.79 + 4.333) +
    4 x (0.79 + 1) = 32.8 s."""
    clock = Clock()
    timer = TimeLeft(100, clock=clock)
    timer.plan([3, 30], [33] * 5 + [3, 3, 3, 3])
    assert timer.seconds_left() is None  # nothing trained yet
    train(timer, clock, 3, 0.01)
    assert timer.per_step == {3: pytest.approx(0.01)} and timer.overhead == pytest.approx(0.76)
    assert timer.seconds_left() is None  # one size: its pace says nothing of 30 or 33 runs
    train(timer, clock, 30, 0.04, until=1)  # the first step says nothing of the pace yet
    assert timer.seconds_left() is None
    clock.now += 0.04
    timer.step(2)
    assert timer.seconds_per_step(33) == pytest.approx(0.01 + 30 * 0.03 / 27)
    assert timer.seconds_left() == pytest.approx(98 * 0.04 + 5 * (0.76 + 100 * (0.01 + 30 * 0.03 / 27))
                                                 + 4 * (0.76 + 1.0))
    for step in range(3, 101):
        clock.now += 0.04
        timer.step(step)
    clock.now += 0.25
    timer.finish()
    assert timer.seconds_left() == pytest.approx(5 * (0.79 + 100 * 0.0433333333) + 4 * (0.79 + 1.0))
    assert timer.seconds_left() == pytest.approx(32.8, abs=0.05)


def test_a_stack_in_hand_is_priced_by_its_steps_left_and_a_wave_by_its_stacks_not_started():
    clock = Clock()
    timer = TimeLeft(10, clock=clock)
    timer.plan([4, 4, 2], [])
    train(timer, clock, 4, 0.5, setup=1.0, tail=1.0)
    train(timer, clock, 2, 0.25, setup=1.0, tail=1.0)  # out of the wave's order: the 2 is done, a 4 is left
    assert timer.queued == [4] and timer.overhead == pytest.approx(2.25)
    train(timer, clock, 4, 0.5, setup=1.0, until=4)
    assert timer.seconds_left() == pytest.approx(6 * 0.5)  # its last 6 steps; nothing queued


def test_workers_sharing_the_queue_share_the_stacks_after_the_wave_not_the_wave_itself():
    """Two workers on one storage each take their next wave from the same queue: each counted
    every stack after its wave as its own, and said twice the time left."""
    timer = TimeLeft(10)
    timer.per_step, timer.overhead = {2: 1.0, 4: 2.0}, 1.0
    timer.plan([4, 2], [4, 4, 2, 2])
    alone = timer.seconds_left()
    assert alone == pytest.approx(21 + 11 + 2 * 21 + 2 * 11)
    timer.workers = 2
    assert timer.seconds_left() == pytest.approx(21 + 11 + (2 * 21 + 2 * 11) / 2)


@pytest.mark.parametrize(("measured", "size", "expected"), [
    ({2: 1.0, 4: 2.0, 8: 4.0}, 6, 3.0),  # on the line through them, here through the origin
    ({2: 1.0, 10: 3.0}, 6, 2.0),  # a = 0.5, b = 0.25
    ({2: 3.0, 10: 1.0}, 6, 2.0),  # larger stacks measured faster: noise, so their mean
    ({2: 0.1, 10: 5.0}, 6, 6 * (2 * 0.1 + 10 * 5.0) / (4 + 100)),  # a line below 0 at n = 0: through the origin
    ({3: 0.7}, 3, 0.7),  # measured
])
def test_a_size_not_trained_yet_is_priced_on_the_line_through_those_that_were(measured, size, expected):
    timer = TimeLeft(10)
    timer.per_step = dict(measured)
    assert timer.seconds_per_step(size) == pytest.approx(expected)


def test_with_one_size_trained_no_other_size_is_priced():
    timer = TimeLeft(10)
    timer.per_step = {3: 0.7}
    assert timer.seconds_per_step(30) is None


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(1, 200), st.floats(1e-4, 10.0), min_size=2, max_size=6), st.integers(1, 400))
def test_a_price_is_never_negative_and_grows_with_the_stack(measured, size):
    """Whatever was measured, a larger stack is priced at least as high as a smaller one, and
    no stack at less than nothing: a time left below zero, or shrinking as runs are added, would
    read as a bug."""
    timer = TimeLeft(10)
    timer.per_step = dict(measured)
    unmeasured = [n for n in (size, size + 1) if n not in measured]
    prices = [timer.seconds_per_step(n) for n in unmeasured]
    assert all(p is not None and p >= 0 for p in prices)
    if len(prices) == 2:
        assert prices[0] <= prices[1] + 1e-12
