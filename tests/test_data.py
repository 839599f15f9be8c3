"""Tests for skipnet.core.data: tiny files in the real on-disk formats, splits, batching, resume."""
from __future__ import annotations

import hashlib
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from skipnet.core import data as D
from skipnet.errors import ConfigError

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """cifar-10-batches-py with five 12-image training batches and a 10-image test batch."""
    root = tmp_path_factory.mktemp("cifar10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images, labels = _random_images(rng, 60), rng.integers(0, 10, 60)
    for b in range(5):
        sl = slice(12 * b, 12 * (b + 1))
        _pickle(folder / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5", "data": images[sl].reshape(12, -1),
            "labels": labels[sl].tolist(), "filenames": [f"img{i}.png" for i in range(12)]})
    test = _random_images(rng, 10)
    _pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "data": test.reshape(10, -1),
        "labels": list(range(10)), "filenames": [f"t{i}.png" for i in range(10)]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                      "num_cases_per_batch": 12, "num_vis": 3072})
    return root, images, labels


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for split, n in (("train", 40), ("test", 8)):
        fine = rng.integers(0, 100, n)
        fine[0] = 99
        _pickle(folder / split, {
            "filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
            "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
            "data": _random_images(rng, n).reshape(n, -1)})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"k{i}" for i in range(20)]})
    return root


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """train_32x32.mat / test_32x32.mat: X is 32x32x3xN uint8, y is Nx1 with 10 meaning digit 0."""
    root = tmp_path_factory.mktemp("svhn")
    rng = np.random.default_rng(3)
    out = {}
    for split, n in (("train", 30), ("test", 6)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0, 0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return root, *out["train"]


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    """train/ and val/ ImageFolder trees of small PNG and JPEG files, three classes."""
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(4)
    for split, per_class in (("train", 8), ("val", 2)):
        for c, name in enumerate(("ant", "bee", "cat")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + 4 * c, 28, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(root / split / name / f"{i}.{ext}")
    return root


def _take(iterator, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(iterator, n))


def _first_permutation(n: int, batch: int) -> torch.Tensor:
    return torch.randperm(n, generator=D._generator(0, D._EPOCH, 0))[:batch]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------- real formats

def test_cifar10_reads_pickled_batches(cifar10_root):
    root, images, labels = cifar10_root
    splits = D.build_splits("cifar10", str(root), val_size=10)
    assert (splits.num_classes, splits.image_size) == (10, 32)
    assert (splits.train_size, splits.val_size, splits.test_size) == (50, 10, 10)
    src = splits.train.source_indices
    assert torch.equal(splits.train.images, torch.from_numpy(images[src.numpy()]))
    assert torch.equal(splits.train.labels, torch.from_numpy(labels[src.numpy()]).long())
    assert splits.test.labels.tolist() == list(range(10))
    x, y = splits.val[0]  # eval view: ToTensor + authors' normalization
    raw = torch.from_numpy(images[int(splits.val.source_indices[0])]).float() / 255
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    torch.testing.assert_close(x, (raw - CIFAR_MEAN) / CIFAR_STD)
    assert y == labels[int(splits.val.source_indices[0])]


def test_cifar100_reads_fine_labels(cifar100_root):
    splits = D.build_splits("cifar100", str(cifar100_root), val_size=5)
    assert splits.num_classes == 100 and splits.train_size == 35 and splits.test_size == 8
    assert int(splits.test.labels[0]) == 99
    assert splits.mean == (0.4914, 0.4822, 0.4465)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(svhn_root):
    root, x, y = svhn_root
    splits = D.build_splits("svhn", str(root), val_size=6)
    full = torch.cat([splits.train.source_indices, splits.val.source_indices])
    labels = torch.cat([splits.train.labels, splits.val.labels])[full.argsort()]
    expected = torch.from_numpy(y[:, 0].astype(np.int64) % 10)
    assert torch.equal(labels, expected) and labels.min() >= 0 and labels.max() <= 9
    i = int(splits.train.source_indices[0])
    assert torch.equal(splits.train.images[0], torch.from_numpy(x[:, :, :, i]).permute(2, 0, 1))
    assert not splits.augment  # SVHN is trained without augmentation
    xb, _ = next(D.train_batches(splits, 4))  # no augmentation: the eval view, permuted
    first = _first_permutation(splits.train_size, 4)
    assert torch.equal(xb, torch.stack([splits.train[int(i)][0] for i in first]))


@pytest.mark.parametrize("name", ["imagenet", "imagefolder"])
def test_folder_tree(folder_root, name):
    splits = D.build_splits(name, str(folder_root), val_size=3, image_size=16)
    assert splits.num_classes == 3 and splits.image_size == 16
    assert (splits.train_size, splits.val_size, splits.test_size) == (21, 3, 6)
    x, y = splits.test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    xb, yb = next(D.train_batches(splits, 5))
    assert xb.shape == (5, 3, 16, 16) and yb.dtype == torch.int64


def test_imagefolder_without_test_tree_has_empty_test(tmp_path, folder_root):
    (tmp_path / "train").symlink_to(folder_root / "train")
    splits = D.build_splits("imagefolder", str(tmp_path), image_size=16)
    assert splits.test_size == 0 and splits.val_size == 2  # default: 10% of 24


def test_imagefolder_prefers_test_tree(tmp_path, folder_root):
    (tmp_path / "train").symlink_to(folder_root / "train")
    (tmp_path / "val").symlink_to(folder_root / "val")
    (tmp_path / "test" / "bee").mkdir(parents=True)  # a test tree may hold only some classes
    Image.new("RGB", (20, 20)).save(tmp_path / "test" / "bee" / "0.png")
    splits = D.build_splits("imagefolder", str(tmp_path), val_size=2, image_size=16)
    assert splits.test_size == 1 and splits.test[0][1] == 1
    (tmp_path / "test" / "dog").mkdir()  # a class the network never saw
    with pytest.raises(ConfigError, match="dog"):
        D.build_splits("imagefolder", str(tmp_path), val_size=2, image_size=16)


# ----------------------------------------------------------------------------- validation split

def test_val_split_disjoint_and_deterministic(cifar10_root):
    root = str(cifar10_root[0])
    a = D.build_splits("cifar10", root, val_size=15, seed=3)
    b = D.build_splits("cifar10", root, val_size=15, seed=3)
    c = D.build_splits("cifar10", root, val_size=15, seed=4)
    tr, va = set(a.train.source_indices.tolist()), set(a.val.source_indices.tolist())
    assert not tr & va and tr | va == set(range(60))
    assert torch.equal(a.val.source_indices, b.val.source_indices)
    assert not torch.equal(a.val.source_indices, c.val.source_indices)
    assert not a.val.augment and a.train.augment


def test_synthetic_default_val_is_ten_percent():
    splits = D.build_splits("synthetic", synthetic_size=200, synthetic_test_size=20)
    assert (splits.train_size, splits.val_size, splits.test_size) == (180, 20, 20)


# ----------------------------------------------------------------------------- batching

def test_train_batches_deterministic_and_resumable_in_memory(cifar10_root):
    splits = D.build_splits("cifar10", str(cifar10_root[0]), val_size=10)  # 50 train, 6 per epoch
    run = _take(D.train_batches(splits, 8, seed=7), 14)
    _assert_same_batches(run, _take(D.train_batches(splits, 8, seed=7), 14))
    for k in (1, 5, 6, 11):  # inside the first epoch, at and across epoch boundaries
        resumed = D.train_batches(splits, 8, seed=7, start_iteration=k)
        _assert_same_batches(run[k:], _take(resumed, 14 - k))
    other = _take(D.train_batches(splits, 8, seed=8), 1)
    assert not torch.equal(run[0][0], other[0][0])
    x, y = run[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_each_epoch_visits_every_sample_once(cifar10_root):
    splits = D.build_splits("cifar10", str(cifar10_root[0]), val_size=10, augment=False)
    schedule = D._schedule(50, 10, 0, 0, True)
    epoch = torch.cat([next(schedule)[2] for _ in range(5)])
    assert sorted(epoch.tolist()) == list(range(50))
    x, _ = next(D.train_batches(splits, 10))
    first = _first_permutation(50, 10)
    assert torch.equal(x, torch.stack([splits.train[int(i)][0] for i in first]))


def test_augmentation_is_a_padded_crop_and_flip(cifar10_root):
    splits = D.build_splits("cifar10", str(cifar10_root[0]), val_size=10)
    images = splits.train.images[:16]
    out = D._crop_flip(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    found = set()
    for i in range(16):
        crops = {(dy, dx): padded[i, :, dy:dy + 32, dx:dx + 32]
                 for dy in range(9) for dx in range(9)}
        matches = [(dy, dx, flip) for (dy, dx), crop in crops.items() for flip in (False, True)
                   if torch.equal(out[i], crop.flip(-1) if flip else crop)]
        assert matches, f"sample {i} is not a padded crop (+ flip) of its source"
        found.add(matches[0])
    assert len(found) > 1  # offsets and flips differ across the batch


def test_batching_restores_thread_count(cifar10_root):
    splits = D.build_splits("cifar10", str(cifar10_root[0]), val_size=10)
    before = torch.get_num_threads()
    batches = D.train_batches(splits, 8)
    next(batches)
    assert torch.get_num_threads() == before  # not left at 1 between batches
    list(D.eval_batches(splits.val, 4))
    assert torch.get_num_threads() == before


def test_train_batches_resumable_folders(folder_root):
    splits = D.build_splits("imagefolder", str(folder_root), val_size=3, image_size=16)  # 21 train
    run = _take(D.train_batches(splits, 4, seed=1), 8)  # 5 batches per epoch
    for k in (3, 6):
        resumed = D.train_batches(splits, 4, seed=1, start_iteration=k)
        _assert_same_batches(run[k:], _take(resumed, 8 - k))
    _assert_same_batches(run[:3], _take(D.train_batches(splits, 4, seed=1, num_workers=2), 3))
    assert not torch.equal(run[0][0], _take(D.train_batches(splits, 4, seed=2), 1)[0][0])


def test_eval_batches_ordered(cifar10_root, folder_root):
    for splits in (D.build_splits("cifar10", str(cifar10_root[0]), val_size=10),
                   D.build_splits("imagenet", str(folder_root), val_size=3, image_size=16)):
        xs, ys = zip(*D.eval_batches(splits.test, 4))
        assert [len(y) for y in ys][-1] == len(splits.test) - 4 * (len(ys) - 1)
        expected = [splits.test[i] for i in range(len(splits.test))]
        assert torch.equal(torch.cat(xs), torch.stack([e[0] for e in expected]))
        assert torch.cat(ys).tolist() == [e[1] for e in expected]


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_same_seed_same_bytes():
    a = D.build_splits("synthetic", synthetic_size=300, synthetic_test_size=50, seed=5)
    b = D.build_splits("synthetic", synthetic_size=300, synthetic_test_size=50, seed=5)
    c = D.build_splits("synthetic", synthetic_size=300, synthetic_test_size=50, seed=6)
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert torch.equal(D.difficulty(x), D.difficulty(y))
    assert not torch.equal(a.test.images, c.test.images)
    assert a.train.images.shape[1:] == (3, 32, 32) and a.train.images.dtype == torch.uint8


SYNTHETIC_DIGEST = "b3fefa5c598661d48d15eee03650a334b0571fa71c9bacd2e09af8a6ef5362da"


def test_synthetic_bytes_pinned():
    """Guards 'bit-identical on every machine': this digest must never change silently."""
    images, labels, diff = D._synthetic_samples(64, 10, 0, D._SYN_TRAIN)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()
                            + diff.numpy().tobytes()).hexdigest()
    assert digest == SYNTHETIC_DIGEST


def test_synthetic_difficulty_range():
    """A narrower range moves only each image's difficulty: same labels, d inside the range,
    and harder images on average; the default range is exactly the unbounded draw."""
    full = D.build_splits("synthetic", synthetic_size=400, synthetic_test_size=50, seed=3)
    same = D.build_splits("synthetic", synthetic_size=400, synthetic_test_size=50, seed=3,
                          synthetic_difficulty=[0, 1])
    hard = D.build_splits("synthetic", synthetic_size=400, synthetic_test_size=50, seed=3,
                          synthetic_difficulty=(0.5, 0.9))
    assert torch.equal(full.train.images, same.train.images)
    assert torch.equal(full.train.labels, hard.train.labels) and torch.equal(full.test.labels, hard.test.labels)
    d = D.difficulty(hard.train)
    assert 0.5 <= float(d.min()) and float(d.max()) <= 0.9 and float(d.min()) < 0.52 and float(d.max()) > 0.88
    assert torch.allclose(d, 0.5 + 0.4 * D.difficulty(full.train))
    with pytest.raises(ConfigError, match=r"data.synthetic_difficulty: .*0 <= low <= high <= 1"):
        D.build_splits("synthetic", synthetic_size=100, synthetic_test_size=10, synthetic_difficulty=[0.5, 1.5])


def test_synthetic_difficulty_from_the_config_reaches_the_data():
    from skipnet.core.config import load_train_config
    from skipnet.core.train import Engine
    cfg = load_train_config(None, {"stage": "base", "model.arch": "cifar10_resnet_20", "data.synthetic_size": 200,
                                   "data.synthetic_test_size": 20, "data.val_size": 20,
                                   "data.synthetic_difficulty": [0.4, 1]})
    assert cfg.data.synthetic_difficulty == (0.4, 1.0)
    splits = Engine(cfg).splits
    assert all(float(D.difficulty(part).min()) >= 0.4 for part in (splits.train, splits.val, splits.test))


def test_synthetic_difficulty_exposed_and_aligned():
    splits = D.build_splits("synthetic", synthetic_size=1000, synthetic_test_size=200)
    full = D._synthetic_samples(1000, 10, 0, D._SYN_TRAIN)[2]
    for ds in (splits.train, splits.val):
        diff = D.difficulty(ds)
        assert diff.dtype == torch.float32 and len(diff) == len(ds)
        assert torch.equal(diff, full[ds.source_indices])
    test = D.difficulty(splits.test)
    assert test.min() >= 0 and test.max() <= 1 and test.min() < 0.05 and test.max() > 0.95
    sub = torch.utils.data.Subset(splits.val, [3, 1])
    assert torch.equal(D.difficulty(sub), D.difficulty(splits.val)[[3, 1]])


def _nearest_class_mean(features: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                        num_classes: int = 10) -> torch.Tensor:
    means = torch.stack([features[labels == c].mean(0) for c in range(num_classes)])
    return torch.cdist(queries, means).argmin(1)


def test_synthetic_colour_is_easy_texture_carries_hard_samples():
    """Pooled colour (what a shallow net sees) solves easy samples only; a whole-image view of
    the stripes (translation-invariant Fourier magnitude) still solves most hard ones."""
    splits = D.build_splits("synthetic", synthetic_size=4000, synthetic_test_size=2000)
    train, test = splits.train, splits.test
    d = D.difficulty(test)

    def colour(ds):
        return ds.images.float().mean((2, 3))

    def spectrum(ds):
        grey = ds.images.float().mean(1)
        return torch.fft.rfft2(grey - grey.mean((1, 2), keepdim=True)).abs().flatten(1)

    easy = D.difficulty(train) < 0.3
    by_colour = _nearest_class_mean(colour(train)[easy], train.labels[easy], colour(test))
    right = (by_colour == test.labels).float()
    assert right[d < 0.3].mean() > 0.9 and right[d > 0.7].mean() < 0.3
    by_texture = _nearest_class_mean(spectrum(train), train.labels, spectrum(test))
    right = (by_texture == test.labels).float()
    assert right[d < 0.5].mean() > 0.95 and right[d > 0.7].mean() > 0.5


def test_synthetic_class_count():
    splits = D.build_splits("synthetic", synthetic_size=400, synthetic_test_size=0, num_classes=12)
    assert splits.num_classes == 12 and splits.test_size == 0
    assert set(splits.train.labels.tolist()) == set(range(12))
    x, y = next(D.train_batches(splits, 32))
    assert x.shape == (32, 3, 32, 32) and y.max() < 12
    assert abs(float(x.mean())) < 1.5  # normalized around 0


def test_difficulty_none_for_real_data(cifar10_root):
    splits = D.build_splits("cifar10", str(cifar10_root[0]), val_size=10)
    assert D.difficulty(splits.train) is None and D.difficulty(splits.test) is None


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, key", [
    (dict(name="mnist"), "data.name"),
    (dict(name="cifar10"), "data.root"),
    (dict(name="cifar10", root="/nonexistent/dir"), "data.root"),
    (dict(name="synthetic", synthetic_size=50, val_size=-1), "data.val_size"),
    (dict(name="synthetic", synthetic_size=50, val_size=50), "data.val_size"),
    (dict(name="synthetic", synthetic_size=50, val_size=2.5), "data.val_size"),
    (dict(name="synthetic", num_classes=1), "data.num_classes"),
    (dict(name="synthetic", num_classes=13), "data.num_classes"),
    (dict(name="imagenet", root="/nonexistent"), "data.root"),
    (dict(name="synthetic", synthetic_size=1), "data.synthetic_size"),
])
def test_bad_inputs_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        D.build_splits(**kwargs)
    assert err.value.path == key and key in str(err.value)


def test_missing_files_name_root_and_layout(tmp_path, cifar10_root):
    for name in ("cifar10", "cifar100", "svhn", "imagenet", "imagefolder"):
        with pytest.raises(ConfigError, match="data.root") as err:
            D.build_splits(name, str(tmp_path))
        assert err.value.accepted.startswith("an existing directory holding")
    with pytest.raises(ConfigError, match="data.val_size"):
        D.build_splits("cifar10", str(cifar10_root[0]))  # default 5,000 > 60 images
    with pytest.raises(ConfigError, match="data.num_classes"):
        D.build_splits("cifar10", str(cifar10_root[0]), val_size=5, num_classes=100)


def test_bad_batch_size(cifar10_root):
    splits = D.build_splits("cifar10", str(cifar10_root[0]), val_size=10)
    for bs in (0, 51):
        with pytest.raises(ConfigError, match="train.batch_size"):
            D.train_batches(splits, bs)  # checked when called, not at the first batch
    assert len(next(D.train_batches(splits, 51, drop_last=False))[1]) == 50
