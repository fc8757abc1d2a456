"""How long a study has left to train, from what its stacks have cost so far.

A stack of n runs costs about `a + b n` seconds a step: the step's fixed work (kernel launches,
Python) is shared by its runs. Counting runs alone, as a progress bar does, takes the small stacks
trained first (GradNorm's, which static retrains wait for) for the study's pace, and the default
study's log said 21 minutes left where 3 remained. So this prices every stack still to train at
the cost measured for its size, or, for a size not trained yet, on the line through the sizes
that were; with one size seen, it does not guess.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence


class TimeLeft:
    """Seconds left for a worker that trains one stack at a time: the stack in hand, the stacks
    of its current wave still to start, and its share of those the runs queued after the wave
    will make (`plan`)."""

    def __init__(self, steps: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.steps = steps
        self.clock = clock
        self.per_step: dict[int, float] = {}  # stack size: seconds a step, as last measured
        self.overhead = 0.0  # seconds a stack spends outside its steps (building, last evaluation), last measured
        self.queued: list[int] = []  # this wave's stacks not started yet
        self.later: list[int] = []  # the stacks the runs after this wave will make
        # Workers training the study now, this one included: each takes its next wave from the same
        # queue, so this one trains about 1 / workers of `later`, at a pace taken to be like its own.
        self.workers = 1
        self._size = 0  # the stack in hand (0: none)
        self._started = self._first = self._last = 0.0
        self._first_step = self._step = 0

    def plan(self, stacks: Sequence[int], later: Sequence[int]) -> None:
        """A wave's stacks, by size, and those its runs still queued will make after it."""
        self.queued, self.later = list(stacks), list(later)

    def start(self, size: int) -> None:
        if size in self.queued:
            self.queued.remove(size)
        self._size, self._started, self._step = size, self.clock(), 0

    def step(self, step: int) -> None:
        """The stack in hand has done `step` of its steps. Its pace counts from the first step
        reported, so that building the stack does not read as slow steps."""
        now = self.clock()
        if self._step == 0:
            self._first, self._first_step = now, step
        elif step > self._first_step:
            self.per_step[self._size] = (now - self._first) / (step - self._first_step)
        self._step, self._last = step, now

    def finish(self) -> None:
        now = self.clock()
        if self._step:
            self.overhead = (self._first - self._started) + (now - self._last)
        self._size = 0

    def seconds_per_step(self, size: int) -> float | None:
        """Measured for this size, or on the least-squares line `a + b n` (a, b >= 0) through the
        sizes measured; None with fewer than two sizes, where any line would be a guess."""
        if size in self.per_step:
            return self.per_step[size]
        if len(self.per_step) < 2:
            return None
        sizes, times = list(self.per_step), list(self.per_step.values())
        mean_n, mean_t = sum(sizes) / len(sizes), sum(times) / len(times)
        spread = sum((n - mean_n) ** 2 for n in sizes)
        b = sum((n - mean_n) * (t - mean_t) for n, t in zip(sizes, times)) / spread
        a = mean_t - b * mean_n
        if b < 0:  # larger stacks measured faster a step: noise; take the mean
            a, b = mean_t, 0.0
        elif a < 0:  # through the origin instead
            a, b = 0.0, sum(n * t for n, t in zip(sizes, times)) / sum(n * n for n in sizes)
        return a + b * size

    def seconds_left(self) -> float | None:
        """None until every stack left can be priced."""
        total = 0.0
        if self._size:
            pace = self.seconds_per_step(self._size)
            if pace is None:
                return None
            total += (self.steps - self._step) * pace
        for stacks, share in ((self.queued, 1), (self.later, max(1, self.workers))):
            for size in stacks:
                pace = self.seconds_per_step(size)
                if pace is None:
                    return None
                total += (self.overhead + self.steps * pace) / share
        return total if math.isfinite(total) else None
