"""Data sets, transforms, the validation split and exactly resumable batching.

``build_splits(name, root)`` returns train / val / test. ``val`` is a seeded part of the
official training set (model selection and searches use it); ``test`` is the official test set
(only reported). CIFAR-10/100, SVHN and ``synthetic`` live in memory as one uint8 tensor and
are batched on whole-batch tensors; ImageNet-style folder trees go through PIL transforms and
a DataLoader. Training batch ``k`` depends only on ``(seed, k)``, so a run resumed at ``k``
sees exactly the batches, augmentation included, of the uninterrupted run. Indexing any data
set gives its eval view (no augmentation).

Synthetic data set: CIFAR-shaped (3x32x32 uint8 images, 10 classes), generated from the
seed in about half a second and bit-identical on every machine (numpy Generator streams, a
rounded cosine table and element-wise float32 arithmetic only). Each class has two cues. The
easy cue is a flat background colour per class (colours spread far apart), which a single
convolution and a global average pool read. The hard cue is a grey stripe texture per class:
vertical, horizontal, diagonal-X or square plaid, with a period of 5, 9 or 16 pixels (±8%,
random phase). Each sample draws a difficulty ``d`` uniform in [0, 1] (or in the range
``synthetic_difficulty`` names); its background is
``(1 - d) * colour[class] + d * colour[random other class]``, its stripes have an amplitude of
``50 * (1 - 0.8 d)`` grey levels and it carries uniform pixel noise of amplitude ``8 + 52 d``.
Below ``d = 0.5`` the colour alone gives the class. Above it the colour points to a wrong
class and only the texture is right, and as ``d`` grows the stripes sink into the noise, so
they must be integrated over ever larger receptive fields, i.e. through more layers. With
300 SGD steps (lr 0.1, batch 64, 6,000 images) a plain ResNet-38 reached 95% validation
accuracy and 83% on the hardest fifth; the path a SkipNet keeps when it skips every gated
block (stem, first block, projection shortcuts) reached 89% and 55%. ``difficulty(dataset)``
returns ``d`` for every synthetic split.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from skipnet.core.config import check_difficulty_range
from skipnet.errors import ConfigError

__all__ = ["DATASETS", "DataSplits", "build_splits", "train_batches", "eval_batches",
           "difficulty", "TensorImageDataset", "FolderImageDataset"]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "svhn", "imagenet", "imagefolder", "synthetic")

Stats = tuple[float, float, float]
_CIFAR: tuple[Stats, Stats] = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # authors' code
_SVHN: tuple[Stats, Stats] = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
_IMAGENET: tuple[Stats, Stats] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SYNTHETIC: tuple[Stats, Stats] = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
_STATS = {"cifar10": _CIFAR, "cifar100": _CIFAR, "svhn": _SVHN, "imagenet": _IMAGENET,
          "imagefolder": _IMAGENET, "synthetic": _SYNTHETIC}
_TORCHVISION = ("cifar10", "cifar100", "svhn")  # loaded in memory through torchvision
_PAD = 4  # CIFAR random-crop padding
# Independent random streams derived from a seed (see _seed).
_SPLIT, _EPOCH, _AUG, _SAMPLE, _CLASSES, _SYN_TRAIN, _SYN_TEST = range(7)


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing integer parts, the same on every machine and run."""
    entropy = [p & 0xFFFF_FFFF_FFFF_FFFF for p in parts]  # SeedSequence wants non-negative ints
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _normalize(images: Tensor, mean: Stats, std: Stats) -> Tensor:
    """uint8 (..., 3, H, W) -> normalized float32, with the arithmetic of ToTensor + Normalize."""
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return images.float().div_(255).sub_(m).div_(s)


class TensorImageDataset(Dataset):
    """Images held as one uint8 tensor ``(N, 3, H, W)`` with int64 labels.

    ``ds[i]`` is the normalized float image and its label. :func:`train_batches` applies
    random crop + flip batch-wise when ``augment`` is set. ``source_indices`` are positions in
    the official split; ``difficulty`` is set for synthetic data only.
    """

    def __init__(self, images: Tensor, labels: Tensor, stats: tuple[Stats, Stats], *,
                 augment: bool = False, difficulty: Tensor | None = None,
                 source_indices: Tensor | None = None, classes: Sequence[str] = ()):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images, self.labels, self.augment = images, labels.long(), augment
        self.mean, self.std = stats
        self.difficulty = difficulty
        self.source_indices = (torch.arange(len(images)) if source_indices is None
                               else source_indices)
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return _normalize(self.images[index], self.mean, self.std), int(self.labels[index])

    def subset(self, indices: Tensor, *, augment: bool) -> "TensorImageDataset":
        """The samples at ``indices`` (copied), in that order."""
        return TensorImageDataset(
            self.images[indices].contiguous(), self.labels[indices], (self.mean, self.std),
            augment=augment, source_indices=self.source_indices[indices], classes=self.classes,
            difficulty=None if self.difficulty is None else self.difficulty[indices])


class FolderImageDataset(Dataset):
    """Image files read with PIL (``(path, label)`` samples), with train and eval transforms.

    ``ds[i]`` applies the eval transform. ``ds[(i, seed)]`` applies the training transform
    (when ``augment``) under a torch RNG seeded with ``seed``: reproducible in any worker.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transforms: tuple[Callable, Callable], *, augment: bool = False,
                 source_indices: Tensor | None = None):
        self.samples, self.classes, self.augment = list(samples), tuple(classes), augment
        self.train_transform, self.eval_transform = transforms
        self.source_indices = (torch.arange(len(self.samples)) if source_indices is None
                               else source_indices)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader
        if isinstance(key, tuple) and self.augment:
            path, label = self.samples[key[0]]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key[1])
                return self.train_transform(default_loader(path)), label
        path, label = self.samples[key[0] if isinstance(key, tuple) else key]
        return self.eval_transform(default_loader(path)), label

    def subset(self, indices: Tensor, *, augment: bool) -> "FolderImageDataset":
        """The samples at ``indices``, in that order."""
        return FolderImageDataset([self.samples[i] for i in indices.tolist()], self.classes,
                                  (self.train_transform, self.eval_transform), augment=augment,
                                  source_indices=self.source_indices[indices])


@dataclass(frozen=True)
class DataSplits:
    """Train (minus validation), validation (held out of train) and the official test set."""

    name: str
    train: Dataset  # augmented when batched by train_batches (if augment)
    val: Dataset  # held-out part of the training set, eval transforms
    test: Dataset  # official test set, eval transforms
    num_classes: int
    image_size: int  # 32 for cifar / svhn / synthetic, configurable for folder trees
    mean: Stats
    std: Stats
    augment: bool

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def val_size(self) -> int:
        return len(self.val)

    @property
    def test_size(self) -> int:
        return len(self.test)


# ----------------------------------------------------------------------------- real data sets

_HOLDING = "an existing directory holding "
_LAYOUT = {
    "cifar10": _HOLDING + "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
    "cifar100": _HOLDING + "cifar-100-python/ (train, test, meta)",
    "svhn": _HOLDING + "train_32x32.mat and test_32x32.mat",
    "imagenet": _HOLDING + "train/ and val/ ImageFolder trees (one folder per class)",
    "imagefolder": _HOLDING + "a train/ ImageFolder tree (one folder per class), optionally "
                              "val/ or test/",
}


def _torchvision_dataset(name: str) -> type:
    """torchvision's class for cifar10 / cifar100 / svhn, checking that the files exist instead
    of their md5 (parsing unchanged). torchvision is imported here and in the folder loaders, not
    with this module: it loads ``torch._dynamo`` (about 3 s), which synthetic runs never need."""
    import torchvision

    def files_exist(self) -> bool:
        if name == "svhn":
            return os.path.isfile(os.path.join(self.root, self.filename))
        files = [f for f, _ in self.train_list + self.test_list]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)

    base = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
            "svhn": torchvision.datasets.SVHN}[name]
    extra = {} if name == "svhn" else {"meta": {**base.meta, "md5": None}}     # md5 None: existence check only
    return type(base.__name__, (base,), {"_check_integrity": files_exist, **extra})


def _load_torchvision(name: str, root: str, download: bool
                      ) -> tuple[TensorImageDataset, TensorImageDataset]:
    """Official train and test sets of cifar10 / cifar100 / svhn, as in-memory tensors."""
    out, cls = [], _torchvision_dataset(name)
    for train in (True, False):
        try:
            if name == "svhn":
                svhn = cls(root, split="train" if train else "test", download=download)
                images, labels = torch.from_numpy(svhn.data), svhn.labels  # data is (N, 3, H, W)
                classes = [str(i) for i in range(10)]
            else:
                cifar = cls(root, train=train, download=download)
                images = torch.from_numpy(cifar.data).permute(0, 3, 1, 2)  # (N, H, W, 3) -> NCHW
                labels, classes = cifar.targets, cifar.classes
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise ConfigError("data.root", root, _LAYOUT[name]) from err
        labels = torch.as_tensor(labels, dtype=torch.long)
        out.append(TensorImageDataset(images.contiguous(), labels, _STATS[name], classes=classes))
    return out[0], out[1]


def _folder_transforms(image_size: int) -> tuple[Callable, Callable]:
    """ImageNet recipe: RandomResizedCrop + flip for training, Resize + CenterCrop for eval."""
    from torchvision import transforms as T
    norm = [T.ToTensor(), T.Normalize(*_IMAGENET)]
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *norm])
    resize = round(image_size * 256 / 224)  # 256 for 224, as in the ImageNet recipe
    return train, T.Compose([T.Resize(resize), T.CenterCrop(image_size), *norm])


def _load_folders(name: str, root: str, image_size: int
                  ) -> tuple[FolderImageDataset, FolderImageDataset]:
    """train/ and the test tree (imagenet: val/; imagefolder: test/, else val/, else none)."""
    import torchvision
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    found = [os.path.join(root, d) for d in (("val",) if name == "imagenet" else ("test", "val"))
             if os.path.isdir(os.path.join(root, d))]
    if not os.path.isdir(os.path.join(root, "train")) or (name == "imagenet" and not found):
        raise ConfigError("data.root", root, _LAYOUT[name])
    try:
        train = torchvision.datasets.ImageFolder(os.path.join(root, "train"))
    except OSError as err:  # FileNotFoundError: no class folders or no image files
        raise ConfigError("data.root", root, _LAYOUT[name]) from err
    test: list[tuple[str, int]] = []
    if found:  # labels follow the train/ class folders
        extra = sorted(e.name for e in os.scandir(found[0]) if e.is_dir()
                       and e.name not in train.class_to_idx)
        if extra:
            where = os.path.basename(found[0])
            raise ConfigError("data.root", root, f"a tree whose {where}/ classes all appear in "
                                                 f"train/ (missing there: {', '.join(extra)})")
        test = make_dataset(found[0], train.class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    transforms = _folder_transforms(image_size)
    return (FolderImageDataset(train.samples, train.classes, transforms),
            FolderImageDataset(test, train.classes, transforms))


# ----------------------------------------------------------------------------- synthetic data

_SIZE = 32  # synthetic images are 32x32 like CIFAR
_CHUNK = 1024  # samples drawn at a time (fixed: part of the definition of the data)
_COS_STEPS = 1024
# cos(2 pi k / steps) rounded to multiples of 2**-14, so every platform's libm gives the same table.
_COS = np.array([round(math.cos(2 * math.pi * k / _COS_STEPS) * 16384) / 16384
                 for k in range(_COS_STEPS)], dtype=np.float32)
_YS, _XS = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
_DIAG = np.float32(math.sqrt(0.5))  # sqrt is correctly rounded everywhere
_AXES = (_XS, _YS, (_XS + _YS) * _DIAG, (_XS - _YS) * _DIAG)  # coordinate along each stripe normal
# Stripe patterns, each mirror-symmetric so that horizontal flips keep the class: vertical,
# horizontal, both diagonals (an X plaid), vertical + horizontal (a square plaid).
_PATTERNS = ((0,), (1,), (2, 3), (0, 1))
_PERIODS = (5.0, 9.0, 16.0)  # pixels
_TEXTURES = tuple((pattern, period) for period in _PERIODS for pattern in _PATTERNS)
_MAX_SYNTHETIC_CLASSES = len(_TEXTURES)


def _synthetic_colours(num_classes: int, seed: int) -> np.ndarray:
    """One RGB colour per class, spread apart by farthest-point sampling (integer maths)."""
    rng = np.random.default_rng(np.random.SeedSequence([_seed(seed, _CLASSES)]))
    candidates = rng.integers(40, 216, size=(64 * num_classes, 3), dtype=np.int64)
    chosen = [0]
    dist = np.full(len(candidates), np.iinfo(np.int64).max)
    for _ in range(num_classes - 1):
        diff = candidates - candidates[chosen[-1]]
        dist = np.minimum(dist, diff[:, 0] ** 2 + diff[:, 1] ** 2 + diff[:, 2] ** 2)
        chosen.append(int(np.argmax(dist)))
    return candidates[chosen].astype(np.float32)


def _texture(k: int, stretch: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Stripes of class ``k`` in [-1, 1]: per-sample period factor and phase (B,) -> (B, H, W)."""
    pattern, period = _TEXTURES[k]
    out = np.zeros((len(stretch), _SIZE, _SIZE), dtype=np.float32)
    for axis in pattern:
        wavelength = (np.float32(period) * stretch)[:, None, None]
        cycles = _AXES[axis][None] / wavelength + phase[:, None, None]  # (B, H, W)
        steps = np.floor((cycles - np.floor(cycles)) * np.float32(_COS_STEPS)).astype(np.int64)
        out += _COS[steps % _COS_STEPS] * np.float32(1 / len(pattern))
    return out


def _synthetic_samples(n: int, num_classes: int, seed: int, stream: int,
                       difficulty_range: tuple[float, float] = (0.0, 1.0)
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` images (N, 3, 32, 32) uint8, labels and difficulty in ``difficulty_range``
    (module docstring). The same seed draws the same labels, cues and noise for any range."""
    f = np.float32
    colours = _synthetic_colours(num_classes, seed)
    rng = np.random.default_rng(np.random.SeedSequence([_seed(seed, stream)]))
    labels = rng.integers(0, num_classes, size=n, dtype=np.int64)
    low, high = difficulty_range
    d = f(low) + f(high - low) * rng.random(n, dtype=f)   # [0, 1]: exactly rng.random
    other = (labels + rng.integers(1, num_classes, size=n, dtype=np.int64)) % num_classes
    stretch = f(0.92) + f(0.16) * rng.random(n, dtype=f)  # period within +-8% of the class's
    phase = rng.random(n, dtype=f)
    colour = (f(1) - d)[:, None] * colours[labels] + d[:, None] * colours[other]  # (N, 3)
    contrast = f(50) * (f(1) - f(0.8) * d)  # stripe amplitude, grey levels: 50 -> 10
    noise = (f(8) + f(52) * d) / f(64)  # noise amplitude 8 -> 60; drawn below in [-64, 64]
    image = np.empty((n, 3, _SIZE, _SIZE), dtype=np.uint8)
    for lo in range(0, n, _CHUNK):  # chunks keep the float temporaries small
        sl = slice(lo, lo + _CHUNK)
        texture = np.empty((len(labels[sl]), _SIZE, _SIZE), dtype=f)
        for k in np.unique(labels[sl]):
            rows = labels[sl] == k
            texture[rows] = _texture(int(k), stretch[sl][rows], phase[sl][rows])
        chunk = rng.integers(-64, 65, size=(len(texture), 3, _SIZE, _SIZE), dtype=np.int8)
        chunk = chunk.astype(f)
        chunk *= noise[sl, None, None, None]
        chunk += (texture * contrast[sl, None, None])[:, None]  # grey stripes on every channel
        chunk += colour[sl, :, None, None]
        image[sl] = np.clip(np.rint(chunk, out=chunk), 0, 255, out=chunk)
    return torch.from_numpy(image), torch.from_numpy(labels), torch.from_numpy(d)


def _synthetic_dataset(n: int, num_classes: int, seed: int, stream: int,
                       difficulty_range: tuple[float, float]) -> TensorImageDataset:
    images, labels, diff = _synthetic_samples(n, num_classes, seed, stream, difficulty_range)
    return TensorImageDataset(images, labels, _SYNTHETIC, difficulty=diff,
                              classes=[f"class{c}" for c in range(num_classes)])


def _check_int(path: str, value: object, low: int, high: int | None = None,
               note: str = "") -> int:
    """``value`` as an int in [low, high], else a ConfigError naming ``path``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):  # type: ignore[operator]
        bounds = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(path, value, bounds + note)
    return int(value)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- splits

def build_splits(name: str, root: str | None = None, *, val_size: int | None = None,
                 download: bool = False, seed: int = 0, augment: bool = True,
                 image_size: int = 224, synthetic_size: int = 10_000,
                 synthetic_test_size: int = 2_000, num_classes: int | None = None,
                 synthetic_difficulty: Sequence[float] = (0.0, 1.0)) -> DataSplits:
    """Load data set ``name`` and hold a seeded validation split out of its training set.

    Args:
        name: one of :data:`DATASETS`.
        root: directory of the files (unused by ``synthetic``); layouts in ``_LAYOUT``.
        val_size: training images held out for validation. Default: 5,000 for CIFAR and SVHN,
            10% for synthetic, min(10,000, 10%) for folder trees.
        download: let torchvision download CIFAR / SVHN into ``root`` when missing.
        seed: picks the validation split and generates the synthetic data.
        augment: crop + flip (CIFAR, synthetic) or RandomResizedCrop + flip (folders) on
            training batches; SVHN is never augmented, as in the paper.
        image_size: crop size for folder trees (the others are 32).
        synthetic_size, synthetic_test_size: synthetic train (validation included), test sizes.
        num_classes: number of synthetic classes (default 10); for real data, a check.
        synthetic_difficulty: ``[low, high]``, the synthetic images' difficulty range.
    """
    if name not in DATASETS:
        raise ConfigError("data.name", name, "one of " + ", ".join(DATASETS))
    size = 32
    if name == "synthetic":
        k = _check_int("data.num_classes", 10 if num_classes is None else num_classes,
                       2, _MAX_SYNTHETIC_CLASSES)
        n_train = _check_int("data.synthetic_size", synthetic_size, 2)
        n_test = _check_int("data.synthetic_test_size", synthetic_test_size, 0)
        d_range = check_difficulty_range(synthetic_difficulty)
        full = _synthetic_dataset(n_train, k, seed, _SYN_TRAIN, d_range)
        test = _synthetic_dataset(n_test, k, seed, _SYN_TEST, d_range)
    elif root is None or not (os.path.isdir(root) or download and name in _TORCHVISION):
        raise ConfigError("data.root", root, _LAYOUT[name])
    elif name in ("imagenet", "imagefolder"):
        size = _check_int("data.image_size", image_size, 8)
        full, test = _load_folders(name, root, size)
    else:
        full, test = _load_torchvision(name, root, download)
    n_classes = k if name == "synthetic" else len(full.classes)
    if num_classes is not None and num_classes != n_classes:
        raise ConfigError("data.num_classes", num_classes, f"{n_classes} (the classes in {root})")

    n = len(full)
    default = {"synthetic": n // 10, "imagenet": min(10_000, n // 10),
               "imagefolder": min(10_000, n // 10)}.get(name, 5_000)
    n_val = _check_int("data.val_size", default if val_size is None else val_size, 0, n - 1,
                       f" ({name} has {n} training images)")
    perm = torch.from_numpy(np.random.default_rng(_seed(seed, _SPLIT)).permutation(n))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    augment = augment and name != "svhn"
    train, val = full.subset(train_idx, augment=augment), full.subset(val_idx, augment=False)
    return DataSplits(name, train, val, test, n_classes, size, *_STATS[name], augment)


# ----------------------------------------------------------------------------- batching

def _schedule(n: int, batch_size: int, seed: int, start_iteration: int, drop_last: bool
              ) -> Iterator[tuple[int, int, Tensor]]:
    """``(iteration, epoch, indices)`` from ``start_iteration`` on; starting anywhere is O(1)."""
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    iteration = start_iteration
    while True:
        epoch, offset = divmod(iteration, per_epoch)
        perm = torch.randperm(n, generator=_generator(seed, _EPOCH, epoch))
        for b in range(offset, per_epoch):
            yield iteration, epoch, perm[b * batch_size:(b + 1) * batch_size]
            iteration += 1


def _crop_flip(images: Tensor, generator: torch.Generator, pad: int = _PAD) -> Tensor:
    """Batched random crop (zero padding ``pad``, per-sample offsets) and horizontal flip."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = torch.randint(0, 2, (n, 1), generator=generator).bool()
    rows = offsets[:, :1] + torch.arange(h)  # (N, H)
    cols = offsets[:, 1:] + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
    batch, chan = torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]  # (N, C, H, W)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run a batch's few small ops on one thread. On a busy 2-core machine, handing a 1.5 MB op
    to two OpenMP threads cost 65 ms per batch against 2.5 ms on one (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pinned(images: Tensor, labels: Tensor, pin_memory: bool) -> tuple[Tensor, Tensor]:
    if pin_memory and torch.cuda.is_available():
        return images.pin_memory(), labels.pin_memory()
    return images, labels


def _memory_batches(ds: TensorImageDataset, schedule: Iterator[tuple[int, int, Tensor]],
                    seed: int, pin_memory: bool) -> Iterator[tuple[Tensor, Tensor]]:
    for iteration, _, idx in schedule:
        with _one_thread():  # never held across the yield: the training step keeps its threads
            images = ds.images[idx]
            if ds.augment:
                images = _crop_flip(images, _generator(seed, _AUG, iteration))
            images, labels = _normalize(images, ds.mean, ds.std), ds.labels[idx]
        yield _pinned(images, labels, pin_memory)


def _memory_eval(ds: TensorImageDataset, batch_size: int, pin_memory: bool
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(ds), batch_size):
        with _one_thread():
            images = _normalize(ds.images[start:start + batch_size], ds.mean, ds.std)
        yield _pinned(images, ds.labels[start:start + batch_size], pin_memory)


def train_batches(splits: DataSplits, batch_size: int, *, seed: int = 0, start_iteration: int = 0,
                  num_workers: int = 0, pin_memory: bool = False, drop_last: bool = True
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless training batches ``(images float32 NCHW normalized, labels int64)`` on the CPU.

    Batch ``i`` is iteration ``start_iteration + i``. Its samples come from the permutation
    seeded by ``(seed, epoch)``, its augmentation from ``(seed, iteration)`` in memory or
    ``(seed, epoch, index)`` for folder trees, so resuming at ``k`` repeats the uninterrupted
    run exactly. ``num_workers`` applies to folder trees only (DataLoader worker processes).
    """
    ds = splits.train
    n = len(ds)
    _check_int("train.batch_size", batch_size, 1, n if drop_last else None,
               " (at most the training set size when drop_last)")
    _check_int("train.start_iteration", start_iteration, 0)
    schedule = _schedule(n, batch_size, seed, start_iteration, drop_last)
    if isinstance(ds, TensorImageDataset):
        return _memory_batches(ds, schedule, seed, pin_memory)
    if isinstance(ds, FolderImageDataset):  # keys (index, augmentation seed) for __getitem__
        keys = ([(i, _seed(seed, _SAMPLE, epoch, i)) for i in idx.tolist()]
                for _, epoch, idx in schedule)
        loader = DataLoader(ds, batch_sampler=keys,  # type: ignore[arg-type]
                            num_workers=num_workers,
                            pin_memory=pin_memory and torch.cuda.is_available())
        return iter(loader)
    raise TypeError(f"train_batches needs splits from build_splits, got {type(ds).__name__}")


def eval_batches(dataset: Dataset, batch_size: int, *, num_workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over ``dataset`` in index order, eval transforms; the last batch may be short."""
    _check_int("eval.batch_size", batch_size, 1)
    if isinstance(dataset, TensorImageDataset):
        return _memory_eval(dataset, batch_size, pin_memory)
    return iter(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                           pin_memory=pin_memory and torch.cuda.is_available()))


def difficulty(dataset: Dataset) -> Tensor | None:
    """Per-sample difficulty in [0, 1] of a synthetic split, in index order; None otherwise.

    Follows ``torch.utils.data.Subset`` wrappers.
    """
    if isinstance(dataset, torch.utils.data.Subset):
        inner = difficulty(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices, dtype=torch.long)]
    return dataset.difficulty if isinstance(dataset, TensorImageDataset) else None
