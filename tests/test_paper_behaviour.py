"""The paper's two-task toy (sigma = (1, 100)): GradNorm raises w_0 above w_1 and beats equal
weights on the task-normalised test loss, on each of three seeds."""

from __future__ import annotations

import pytest

from bench.training import Budget, RunConfig, train_runs

PAPER_TOY = {"tasks": 2, "sigmas": (1.0, 100.0), "n_train": 1000, "n_val": 1000, "n_test": 2000}
BUDGET = Budget(steps=1500, batch_size=100, lr=1e-3, eval_every=500)


def runs(balancer: str, **params) -> list:
    configs = [RunConfig(problem="toy", balancer=balancer, seed=s, problem_params=PAPER_TOY,
                         balancer_params=params, budget=BUDGET, device="cpu").validated()
               for s in (0, 1, 2)]
    return train_runs(configs)


@pytest.mark.slow
def test_gradnorm_beats_equal_weights_on_the_paper_toy():
    # alpha = 0.12 as in the paper; the weights' rate for the toy is ours (see README).
    gradnorm = runs("gradnorm", alpha=0.12, weight_lr=0.002)
    equal = runs("equal")
    for g, e in zip(gradnorm, equal):
        assert g.ok and e.ok
        assert g.mean_weights[0] > g.mean_weights[1]
        assert g.normalized_test_loss < e.normalized_test_loss
        assert g.balancer_stats["nonpositive_weight_steps"] == 0
