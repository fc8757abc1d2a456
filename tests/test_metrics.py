"""Evaluation metrics and the dense losses of NYUv2 against values worked out by hand: which
entries count (ignored labels, missing depths and normals) and how runs and chunks add up."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.problems.losses import cross_entropy
from bench.problems.metrics import (accuracy_metric, angle_error_metric, masked_rms_metric, mean_iou_metric,
                                    rms_metric)
from bench.problems.nyuv2 import depth_loss, normal_loss


def evaluate(metric, pred: torch.Tensor, target: torch.Tensor, chunk: int | None = None) -> list[float]:
    """The metric over the batch dimension (dim 1), in chunks of `chunk` examples if given, as
    the engine evaluates a split."""
    n = pred.shape[1]
    step = chunk or n
    stats = sum(metric.batch_stats(pred[:, i:i + step], target[:, i:i + step]) for i in range(0, n, step))
    return metric.finalize(stats, n).tolist()


def logits_for(classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Logits whose arg-max is `classes`, with the class dimension at dim 2 as the heads give it."""
    one_hot = F.one_hot(classes, n_classes).float()
    return one_hot.movedim(-1, 2)


def test_accuracy_counts_labelled_entries_only_for_each_run():
    pred = torch.tensor([[0, 1, 2, 0], [2, 2, 2, 2]])
    target = torch.tensor([[0, 1, 1, -1], [2, 0, -1, -1]])
    # Run 0: 2 right of 3 labelled; run 1: 1 of 2. Counting the unlabelled ones would give 2/4, 1/4.
    assert evaluate(accuracy_metric(), logits_for(pred, 3), target) == pytest.approx([2 / 3, 1 / 2])
    assert evaluate(accuracy_metric(), logits_for(pred, 3), target, chunk=1) == pytest.approx([2 / 3, 1 / 2])
    assert accuracy_metric().higher_is_better


def test_mean_iou_by_hand_over_the_classes_present_and_the_labelled_pixels():
    pred = torch.tensor([[[[0, 0, 1], [1, 2, 2]]]])  # (runs, batch, H, W)
    target = torch.tensor([[[[0, 1, 1], [-1, 2, 0]]]])
    # Labelled pixels only (the prediction 1 on the unlabelled pixel counts for nothing):
    # class 0: predicted {(0,0), (0,1)}, true {(0,0), (1,2)}: IoU 1/3; class 1: {(0,2)} and
    # {(0,1), (0,2)}: 1/2; class 2: {(1,1), (1,2)} and {(1,1)}: 1/2. Mean 4/9. A fourth class,
    # in neither map, is left out of the mean rather than counted as 0 (or 1).
    for classes in (3, 4):
        metric = mean_iou_metric(classes)
        assert evaluate(metric, logits_for(pred, classes), target) == pytest.approx([4 / 9])
    # Over two images, intersections and unions add up before dividing: the second image, a
    # perfect class-0 map of 6 pixels, makes class 0's IoU (1 + 6) / (3 + 6), not the mean of 1/3 and 1.
    pred2 = torch.cat([pred, torch.zeros_like(pred)], dim=1)
    target2 = torch.cat([target, torch.zeros_like(target)], dim=1)
    expected = (7 / 9 + 1 / 2 + 1 / 2) / 3
    assert evaluate(mean_iou_metric(3), logits_for(pred2, 3), target2) == pytest.approx([expected])
    assert evaluate(mean_iou_metric(3), logits_for(pred2, 3), target2, chunk=1) == pytest.approx([expected])


def test_rms_is_over_every_output_and_masked_rms_over_valid_depths():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert evaluate(rms_metric(), pred, torch.zeros_like(pred)) == pytest.approx([math.sqrt(30 / 4)])
    assert evaluate(rms_metric(), pred, torch.zeros_like(pred), chunk=1) == pytest.approx([math.sqrt(30 / 4)])
    depth_pred = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[5.0, 5.0, 5.0]]]])  # (runs, batch, 1, W)
    depth_true = torch.tensor([[[[0.0, 4.0, 3.0]]], [[[4.0, 4.0, 0.0]]]])
    # Run 0: errors at the two pixels with a depth, 2 and 0: sqrt(4 / 2); run 1: 1 and 1: 1.
    assert evaluate(masked_rms_metric(), depth_pred, depth_true) == pytest.approx([math.sqrt(2), 1.0])


def test_angle_error_in_degrees_over_pixels_with_a_normal():
    pred = torch.tensor([[1.0, 0, 0], [0, 0, 2], [1, 0, 0], [1, 0, 0]])
    true = torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    # 90, 0 and 45 degrees; the last pixel has no normal (against which any prediction would
    # be 90 degrees off). Mean 45, not 225 / 4.
    as_maps = lambda v: v.T.reshape(1, 1, 3, 1, -1)  # (runs, batch, channels, H, W)
    assert evaluate(angle_error_metric(), as_maps(pred), as_maps(true)) == pytest.approx([45.0])
    # Normals pointing away from the camera (components summing below 0) are normals all the same.
    away = torch.tensor([[0.0, 0, -1], [0, -1, 0]])
    assert evaluate(angle_error_metric(), as_maps(torch.tensor([[0.0, 0, -1]] * 2)), as_maps(away)) == \
        pytest.approx([45.0])


def test_a_perfect_normal_is_0_degrees_off_never_nan():
    """In float32 the cosine of a prediction parallel to its normal comes out above 1 (up to
    1.0000004) at one pixel in five to ten, and its arc cosine is NaN: a perfect model's angle
    error would read NaN."""
    torch.manual_seed(0)
    normals = torch.randn(1, 2, 3, 8, 8)
    assert evaluate(angle_error_metric(), normals, 2 * normals) == pytest.approx([0.0], abs=0.05)


def test_depth_and_normal_losses_average_over_valid_pixels_of_each_run():
    pred = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[0.0, 0.0, 0.0]]]])
    true = torch.tensor([[[[0.0, 4.0, 2.0]]], [[[1.0, 1.0, 1.0]]]])
    # Run 0: |2 - 4| + |3 - 2| over its 2 pixels with a depth; run 1: 3 over 3.
    assert depth_loss(pred, true).tolist() == pytest.approx([1.5, 1.0])
    normals = torch.tensor([[1.0, 0, 0], [0, 0, 2], [1, 0, 0]]).T.reshape(1, 1, 3, 1, 3)
    true_normals = torch.tensor([[0.0, 1, 0], [0, 0, 1], [0, 0, 0]]).T.reshape(1, 1, 3, 1, 3)
    # 1 - cos: 1 and 0 over the two pixels with a normal.
    assert normal_loss(normals, true_normals).tolist() == pytest.approx([0.5])


def test_cross_entropy_leaves_out_unlabelled_entries_and_a_run_with_none_scores_zero():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4)
    target = torch.tensor([[0, 1, -1, 3, 2], [-1, -1, 2, 2, 0], [-1, -1, -1, -1, -1]])
    losses = cross_entropy(logits, target)
    for run in range(2):
        assert losses[run].item() == pytest.approx(F.cross_entropy(logits[run], target[run], ignore_index=-1).item())
    assert losses[2].item() == 0.0
