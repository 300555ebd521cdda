"""Data sets the search trains on: a generated default, CIFAR-10 and image folders.

Everything here produces uint8 image tensors ``[N, 3, H, W]`` and int64 labels ``[N]``
held in memory; :class:`TensorImageDataset` turns one image into a normalised float
tensor ``[3, H, W]`` on the fly. The CLI only calls :func:`build_datasets`.

The generated default (``"synthetic"``)
---------------------------------------
No download ever: :func:`make_synthetic` draws procedural shapes. Class ``c`` is the
shape family ``SHAPE_FAMILIES[c]`` (disc, ring, square, square frame, triangle,
plus-cross, striped disc, checkered square, pair of blobs, bar) drawn at a random
position, scale (radius 6-11 px at 32x32), stretch, tilt (within +-18 degrees) and
colour over a textured two-colour background, with up to three small shapes of any family
as distractors, an occluding line and pixel noise. Each image draws a hardness that sets
its contrast, clutter and noise, from clean to hard. Colours are drawn independently of
the class, so colour statistics do not give the class away (a nearest-class-mean-colour
classifier is at chance); the net has to see outlines up to ~24 px across.

Difficulty, measured with ``python -m fbnet_fast.data --calibrate --seed S --threads 1``
(CPU): a conv-BN-ReLU net with 16-32-48-64 channels, 3x3 kernels, strides 1-2-2-2, global
average pool and linear (47k parameters), trained 5 epochs with SGD (lr 0.05, momentum
0.9, weight decay 5e-4, cosine, batch 64, the crop + flip augmentation) on 8,000 images,
reaches **67.1 / 66.4 / 60.0 % (seeds 0 / 1 / 2, mean 64.5 %)** on 2,000 validation
images; chance is 10 %. The architecture matters (seed 0, same recipe): 5x5 kernels
(``--kernel 5``, 130k parameters) 88.0 %, two layers per stage (``--repeats 2``, 117k)
90.4 %, 1.65x wider (``--width 1.65``, 128k) 75.3 %: receptive field and depth are
worth more than width.
Generation: 20,000 images in 1.6 s on an idle 2-core CPU (numpy, mostly one core).

Each image depends only on ``(seed, stream, index)``: images are drawn in chunks of
:data:`_CHUNK` consecutive indices, each chunk from its own seeded generator, so the
first 100 images are the same whether 100 or 100,000 are requested.

Errors
------
Anything a user's data can get wrong raises :class:`~fbnet_fast.errors.DataError`
naming the path and what was expected; a bad option value (an unknown spec, a
negative count) raises :class:`~fbnet_fast.errors.ConfigError`.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fbnet_fast.errors import ConfigError, DataError

__all__ = [
    "SYNTHETIC_NUM_TRAIN",
    "SYNTHETIC_NUM_VAL",
    "FOLDER_TRAIN_FRACTION",
    "IMAGE_EXTENSIONS",
    "SHAPE_FAMILIES",
    "CIFAR10_CLASSES",
    "make_synthetic",
    "channel_stats",
    "RandomCropFlip",
    "TensorImageDataset",
    "ImageFolderDataset",
    "CIFAR10Arrays",
    "load_cifar10",
    "DataBundle",
    "build_datasets",
    "split_indices",
    "make_loader",
]

# Default sizes of the "synthetic" spec: small enough that the default search (warm-up +
# search epochs on 2 CPU cores) finishes in minutes, large enough that the 20 % architecture
# split (1,200 images) gives a usable gradient signal for theta.
SYNTHETIC_NUM_TRAIN = 6000
SYNTHETIC_NUM_VAL = 2000
# Share of a class-per-subfolder tree used for training when it has no train/ and val/.
FOLDER_TRAIN_FRACTION = 0.8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

SHAPE_FAMILIES = (
    "disc", "ring", "square", "frame", "triangle",
    "cross", "stripes", "checker", "pair", "bar",
)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

# ---------------------------------------------------------------------------------------
# Generated data set
# ---------------------------------------------------------------------------------------

# Images per independently seeded chunk at 32x32 (scaled by area for other sizes, rounded
# up to a multiple of num_classes so every chunk is balanced): large enough to amortise
# the per-family Python loop, small enough that the float32 temporaries
# (4 layers x 256 x 32 x 32) stay around 1 MB each.
_CHUNK = 256
# Streams keep train and validation images disjoint for the same user seed.
_STREAM_TRAIN = 0
_STREAM_VAL = 1


@dataclass(frozen=True)
class _Difficulty:
    # Every image draws a hardness h uniform in [hardness]; contrast, clutter and noise
    # are interpolated from their (easy, hard) ends by h. The spread matters more than the
    # mean: with every image at h = 0.5 the calibration net stayed at 12-19 % after 5
    # epochs whatever single element was removed (no clean examples to start learning
    # shapes from); with a spread it learns on the clean images and the hard ones cap it.
    # Radii and centres are in normalised units (the image spans [-1, 1]); colour
    # distances are Euclidean in RGB [0, 1]^3.
    hardness: tuple[float, float] = (0.0, 1.0)
    obj_scale: tuple[float, float] = (0.40, 0.70)
    obj_centre: float = 0.35
    # Max |tilt| as a fraction of a half turn. Full rotations kept the calibration net at
    # 10 % after 5 epochs (20 % with +-18 degrees, other knobs equal) and would merge
    # orientation-bearing families (bar, stripes) into their rotations anyway.
    rotation: float = 0.1
    stretch: tuple[float, float] = (0.85, 1.18)
    # Object contrast is the strongest knob: at h = 0.5, 0.8 gave 68 % and 0.525 gave 16 %.
    contrast: tuple[float, float] = (0.90, 0.60)
    bg_contrast: tuple[float, float] = (0.05, 0.45)
    num_distractors: int = 3  # at most; an image with hardness h gets floor(4 h) of them
    distractor_scale: tuple[float, float] = (0.10, 0.22)
    distractor_contrast: tuple[float, float] = (0.20, 0.60)
    occluder_from: float = 0.4  # images with h above this get an occluding line
    noise_sigma: tuple[float, float] = (0.0, 0.12)


_DIFFICULTY = _Difficulty()


def _box(u: np.ndarray, v: np.ndarray, hu: float, hv: float) -> np.ndarray:
    # Signed distance (inside < 0) of an axis-aligned box; the outside part is the
    # Chebyshev approximation, which is all the one-pixel anti-aliasing needs.
    return np.maximum(np.abs(u) - hu, np.abs(v) - hv)


def _soft(d: np.ndarray, px: np.ndarray) -> np.ndarray:
    # Coverage of a pixel by the region d < 0, with d in local units and px the size of a
    # pixel in the same units: a one-pixel linear ramp, so small shapes stay visible.
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _family_alpha(family: int, u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Coverage ``[M, H, W]`` in [0, 1] of shape *family* at local coordinates u, v ``[M, H, W]``.

    Local units: the shape fits in radius ~0.9; ``px`` ``[M, 1, 1]`` is one pixel.
    """
    name = SHAPE_FAMILIES[family]
    if name == "disc":
        return _soft(np.hypot(u, v) - 0.78, px)
    if name == "ring":
        return _soft(np.abs(np.hypot(u, v) - 0.66) - 0.17, px)
    if name == "square":
        return _soft(_box(u, v, 0.68, 0.68), px)
    if name == "frame":
        return _soft(np.abs(_box(u, v, 0.62, 0.62)) - 0.15, px)
    if name == "triangle":
        # Equilateral triangle with circumradius 0.9: the max over its three edge
        # half-planes (inradius 0.45).
        d = v - 0.45
        for ang in (math.radians(210.0), math.radians(330.0)):
            d = np.maximum(d, u * math.cos(ang) + v * math.sin(ang) - 0.45)
        return _soft(d, px)
    if name == "cross":
        return _soft(np.minimum(_box(u, v, 0.85, 0.22), _box(u, v, 0.22, 0.85)), px)
    if name == "stripes":
        k = 3.0 * math.pi  # period 0.67 local units: ~3 stripes across the disc
        inside = _soft(np.hypot(u, v) - 0.85, px)
        return inside * _soft(-np.sin(k * u) / k, px)
    if name == "checker":
        k = 2.5 * math.pi
        inside = _soft(_box(u, v, 0.75, 0.75), px)
        return inside * _soft(-np.sin(k * u) * np.sin(k * v) / k, px)
    if name == "pair":
        d = np.minimum(np.hypot(u - 0.52, v), np.hypot(u + 0.52, v)) - 0.36
        return _soft(d, px)
    if name == "bar":
        return _soft(_box(u, v, 0.9, 0.24), px)
    raise AssertionError(f"unhandled shape family {name}")  # internal table only


def _shape_layers(
    rng: np.random.Generator,
    family: np.ndarray,
    centre: np.ndarray,
    scale: np.ndarray,
    grid: np.ndarray,
    pixel: float,
    knobs: _Difficulty,
) -> np.ndarray:
    """Coverage ``[M, H, W]`` of M shapes: family ``[M]``, centre ``[M, 2]``, scale ``[M]``."""
    m = family.shape[0]
    theta = rng.uniform(-math.pi * knobs.rotation, math.pi * knobs.rotation, m).astype(np.float32)
    # Mild anisotropy so a disc is not always a perfect circle: shape identity must be
    # read from topology and corners, not from one exact radius.
    stretch = rng.uniform(*knobs.stretch, m).astype(np.float32)
    c, s = np.cos(theta), np.sin(theta)
    sx, sy = scale * stretch, scale / stretch
    # u = (c (x - cx) + s (y - cy)) / sx is affine in x and y separately, so it is built
    # as one [M, 1, W] + [M, H, 1] broadcast instead of four full [M, H, W] products.
    coords = grid[1, 0]  # x along W; y along H uses the same values
    u_x = (c / sx)[:, None] * coords
    u_y = (s / sx)[:, None] * coords - ((c * centre[:, 0] + s * centre[:, 1]) / sx)[:, None]
    v_x = (-s / sy)[:, None] * coords
    v_y = (c / sy)[:, None] * coords - ((-s * centre[:, 0] + c * centre[:, 1]) / sy)[:, None]
    px = (pixel / scale)[:, None, None]
    alpha = np.empty((m, coords.size, coords.size), dtype=np.float32)
    for f in np.unique(family):
        sel = np.flatnonzero(family == f)
        u = u_x[sel, None, :] + u_y[sel, :, None]
        v = v_x[sel, None, :] + v_y[sel, :, None]
        alpha[sel] = _family_alpha(int(f), u, v, px[sel])
    return alpha


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _colour_at(rng: np.random.Generator, base: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Colours ``[B, 3]`` in [0, 1] at about RGB distance ``dist`` ``[B]`` from ``base`` ``[B, 3]``.

    Offsetting ``base`` along a random direction and clipping to the cube silently loses
    most of the contrast when ``base`` is near a face; picking the best of 16 uniform
    candidates keeps the contrast while the hue stays random and independent of the class.
    Candidates whose luminance differs by less than half the distance are penalised:
    without that rule, nearly iso-luminant shapes left the calibration net near chance for
    the first epochs in some seeds (30 % after 5 epochs on the cleanest images, against
    78 % with the rule, same seed).
    """
    cand = rng.uniform(0.0, 1.0, (base.shape[0], 16, 3)).astype(np.float32)
    err = np.abs(np.linalg.norm(cand - base[:, None], axis=2) - dist[:, None])
    luma = np.abs((cand - base[:, None]) @ _LUMA)
    err += (luma < 0.5 * dist[:, None]) * 1.0
    return cand[np.arange(base.shape[0]), err.argmin(axis=1)]


def _lerp(ends: tuple[float, float], h: np.ndarray) -> np.ndarray:
    return (ends[0] + (ends[1] - ends[0]) * h).astype(np.float32)


def _render_chunk(
    rng: np.random.Generator, labels: np.ndarray, size: int, knobs: _Difficulty
) -> np.ndarray:
    """Images ``[B, 3, size, size]`` uint8 for labels ``[B]``."""
    b = labels.shape[0]
    coords = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    grid = np.stack(np.meshgrid(coords, coords, indexing="ij"))  # [2 (y, x), H, W]
    pixel = 2.0 / size
    h = rng.uniform(*knobs.hardness, b).astype(np.float32)

    # Background: two colours mixed by a blotchy field (random coarse grid, bicubically
    # upsampled) plus one random grating, so edges exist everywhere and an edge detector
    # alone does not find the object.
    col_a = rng.uniform(0.0, 1.0, (b, 3)).astype(np.float32)
    col_b = _colour_at(rng, col_a, _lerp(knobs.bg_contrast, h))
    coarse = torch.from_numpy(rng.uniform(0.0, 1.0, (b, 1, 5, 5)).astype(np.float32))
    blot = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).numpy()
    freq = rng.uniform(1.5, 5.0, (b, 1, 1)).astype(np.float32) * math.pi
    ori = rng.uniform(0.0, math.pi, (b, 1, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2.0 * math.pi, (b, 1, 1)).astype(np.float32)
    wave = np.sin(freq * (np.cos(ori) * grid[1] + np.sin(ori) * grid[0]) + phase)
    mix = np.clip(0.75 * blot + 0.25 * wave[:, None], 0.0, 1.0)  # [B, 1, H, W]
    img = col_a[:, :, None, None] + (col_b - col_a)[:, :, None, None] * mix

    # The object and the distractors are rendered together: one vectorised pass per family.
    k = knobs.num_distractors
    dist_family = rng.integers(0, len(SHAPE_FAMILIES), (b, k))
    families = np.concatenate([labels[:, None], dist_family], axis=1).reshape(-1)
    centre = np.empty((b, k + 1, 2), dtype=np.float32)
    centre[:, 0] = rng.uniform(-knobs.obj_centre, knobs.obj_centre, (b, 2))
    centre[:, 1:] = rng.uniform(-0.95, 0.95, (b, k, 2))
    # Harder images get more distractors; unused ones are parked off the image so every
    # image consumes the same random draws.
    active = np.arange(k)[None, :] < np.floor(h * (k + 1))[:, None]
    centre[:, 1:][~active] = 10.0
    scale = np.empty((b, k + 1), dtype=np.float32)
    scale[:, 0] = rng.uniform(*knobs.obj_scale, b)
    scale[:, 1:] = rng.uniform(*knobs.distractor_scale, (b, k))
    alpha = _shape_layers(
        rng, families, centre.reshape(-1, 2), scale.reshape(-1), grid, pixel, knobs
    ).reshape(b, k + 1, size, size)

    base = 0.5 * (col_a + col_b)
    for layer in list(range(1, k + 1)) + [0]:  # distractors behind the object
        ends = knobs.contrast if layer == 0 else knobs.distractor_contrast
        colour = _colour_at(rng, base, _lerp(ends, h))[:, :, None, None]
        a = alpha[:, layer, None]
        img += a * (colour - img)

    # A thin line across harder images, in front of everything: occlusion breaks outlines,
    # so the net cannot rely on a single intact edge.
    lp = rng.uniform(-0.8, 0.8, (b, 1, 1)).astype(np.float32)
    lp[h <= knobs.occluder_from] = 10.0
    lo = rng.uniform(0.0, math.pi, (b, 1, 1)).astype(np.float32)
    dist = np.abs(np.cos(lo) * grid[1] + np.sin(lo) * grid[0] - lp) - 0.6 * pixel
    la = np.clip(0.5 - dist / pixel, 0.0, 1.0)[:, None]
    lc = _colour_at(rng, base, np.full(b, 0.6, np.float32))[:, :, None, None]
    img += la * (lc - img)

    # Uniform noise with the requested std: numpy's Gaussian draws cost ~5x more (0.8 s vs
    # 0.15 s per 5,000 images), the largest single item of the generation time.
    sigma = _lerp(knobs.noise_sigma, h)[:, None, None, None] * math.sqrt(12.0)
    noise = rng.random(img.shape, dtype=np.float32)
    noise -= 0.5
    noise *= sigma
    img += noise
    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return int(value)


def _synthetic(
    num_images: int, seed: int, stream: int, image_size: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    num_images = _check_int("num_images", num_images, 0)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 8, 1024)
    num_classes = _check_int("num_classes", num_classes, 2, len(SHAPE_FAMILIES))
    per_chunk = max(1, round(_CHUNK * (32 / image_size) ** 2))
    chunk = -(-per_chunk // num_classes) * num_classes
    images = np.empty((num_images, 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(num_images, dtype=np.int64)
    for start in range(0, num_images, chunk):
        rng = np.random.default_rng([seed, stream, start // chunk, image_size, num_classes])
        # Consecutive blocks of num_classes indices hold every class once, so any prefix is
        # balanced to within one image per class.
        blocks = np.tile(np.arange(num_classes), (chunk // num_classes, 1))
        lab = rng.permuted(blocks, axis=1).reshape(-1)
        stop = min(start + chunk, num_images)
        # Render the full chunk even when only a prefix is needed, so image i does not
        # depend on how many images were requested.
        imgs = _render_chunk(rng, lab, image_size, _DIFFICULTY)
        images[start:stop] = imgs[: stop - start]
        labels[start:stop] = lab[: stop - start]
    return torch.from_numpy(images), torch.from_numpy(labels)


def make_synthetic(
    num_images: int, *, seed: int = 0, image_size: int = 32, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the default data set: procedural shapes on cluttered backgrounds.

    Returns ``(images, labels)``: images uint8 ``[num_images, 3, image_size, image_size]``,
    labels int64 ``[num_images]`` in ``[0, num_classes)``, balanced to within one image
    per class. Class ``c`` is the shape family ``SHAPE_FAMILIES[c]``. Image ``i`` depends
    only on ``(seed, i, image_size, num_classes)``, not on ``num_images``.

    Raises ConfigError for a negative count or seed, ``image_size`` outside [8, 1024] or
    ``num_classes`` outside [2, 10].
    """
    return _synthetic(num_images, seed, _STREAM_TRAIN, image_size, num_classes)


# ---------------------------------------------------------------------------------------
# Normalisation, augmentation, tensor data set
# ---------------------------------------------------------------------------------------

def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 images ``[N, C, H, W]``.

    The std is floored at 1/255 so a constant channel does not divide by zero.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"images must be a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    c = images.shape[1]
    x = images.transpose(0, 1).reshape(c, -1).to(torch.float64) / 255.0
    mean = x.mean(dim=1)
    std = x.std(dim=1, unbiased=False).clamp_min(1.0 / 255.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class RandomCropFlip:
    """Standard small-image training augmentation on one float image ``[C, H, W]``.

    Zero-pads by ``padding`` pixels, crops a random ``H x W`` window, and flips
    horizontally with probability 0.5. Output ``[C, H, W]``, same dtype.

    Randomness: drawn from ``generator`` when given (the same generator state and the
    same call order give the same crops; save ``generator.get_state()`` to resume),
    otherwise from torch's global RNG. Inside a DataLoader worker a copied generator would
    repeat the same draws in every worker, so there a private generator is seeded from the
    worker's seed, which the loader derives from its own seeded generator
    (see :func:`make_loader`): still reproducible, different per worker.
    """

    def __init__(self, *, padding: int = 4, flip: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.padding = _check_int("padding", padding, 0)
        self.flip = bool(flip)
        self.generator = generator
        self._worker_seed: int | None = None
        self._worker_generator: torch.Generator | None = None

    def _rng(self) -> torch.Generator | None:
        info = torch.utils.data.get_worker_info()
        if info is None or self.generator is None:
            return self.generator
        if self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self._worker_generator = torch.Generator().manual_seed(info.seed)
        return self._worker_generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        g = self._rng()
        p = self.padding
        draws = torch.randint(0, 2 * p + 1, (2,), generator=g)
        flip = self.flip and bool(torch.randint(0, 2, (1,), generator=g))
        if p:
            h, w = image.shape[-2:]
            dy, dx = int(draws[0]), int(draws[1])
            image = F.pad(image, (p, p, p, p))[..., dy:dy + h, dx:dx + w]
        if flip:
            image = image.flip(-1)
        return image.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class TensorImageDataset(Dataset):
    """In-memory images with labels; item ``i`` is ``(image float [C, H, W], label int)``.

    ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``. An item is scaled to
    [0, 1], passed through ``transform`` (if any, on the float image) and normalised by
    per-channel ``mean``/``std`` (sequences of C floats in [0, 1] units; by default the
    statistics of ``images`` themselves). Padding in the transform is therefore black.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images must be a uint8 tensor [N, C, H, W], got {got}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise DataError(f"labels must be a tensor [N] with N = {images.shape[0]} (images), got {got}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DataError(f"labels must be an integer tensor, got {labels.dtype}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform
        if mean is None or std is None:
            m, s = channel_stats(images) if len(images) else ((0.0,) * images.shape[1], (1.0,) * images.shape[1])
            mean = m if mean is None else mean
            std = s if std is None else std
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise DataError(f"mean and std must have {c} values (one per channel), got {len(mean)} and {len(std)}")
        if any(float(s) <= 0 for s in std):
            raise DataError(f"std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(c, 1, 1)
        self._inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32).view(c, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return (x - self._mean) * self._inv_std, int(self.labels[index])


# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------

def _is_hidden(name: str) -> bool:
    # ".DS_Store", ".ipynb_checkpoints", and the "__MACOSX" folder macOS zips add, which
    # would otherwise become a class full of unreadable "._x.png" resource forks.
    return name.startswith(".") or name.startswith("__")


def _list_dir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not _is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}") from exc


def _image_files(folder: Path, _seen: set[str] | None = None) -> tuple[list[Path], int]:
    """Image files under *folder* (recursive, sorted) and the count of other files."""
    # Symlinked folders are followed, once each, so a link cycle cannot recurse forever.
    seen = set() if _seen is None else _seen
    real = os.path.realpath(folder)
    if real in seen:
        return [], 0
    seen.add(real)
    found: list[Path] = []
    other = 0
    for entry in _list_dir(folder):
        if entry.is_dir():
            sub, sub_other = _image_files(Path(entry.path), seen)
            found.extend(sub)
            other += sub_other
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            found.append(Path(entry.path))
        else:
            other += 1
    return found, other


def _read_image(path: Path, size: int) -> np.ndarray:
    """Decode *path* to uint8 ``[size, size, 3]``: shorter side resized, centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly, so a large photo read for a
        # 32 px target never materialises at full size; the resize below still antialiases.
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        if w < 1 or h < 1:
            raise OSError("image has zero size")
        r = size / min(w, h)
        nw, nh = max(size, round(w * r)), max(size, round(h * r))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


class ImageFolderDataset(TensorImageDataset):
    """Images in a class-per-subfolder tree, decoded once into memory.

    Memory is ``N x 3 x image_size^2`` bytes (100,000 images at 32 px: 300 MB); meant for
    the small proxy sets a search runs on, not for ImageNet-sized folders.

    Layout ``root/<class>/<...>/<image>``; classes are the non-hidden subfolders of
    ``root`` sorted by name (``classes``, ``class_to_idx``). Files with an extension in
    :data:`IMAGE_EXTENSIONS` (any case) are read recursively with Pillow, converted to RGB,
    resized so the shorter side is ``image_size`` and centre-cropped: ``images`` uint8
    ``[N, 3, image_size, image_size]``, ``labels`` int64 ``[N]``, ``paths`` ``[N]``. Files
    at the top level and files with other extensions are ignored.

    The folder is only read; nothing (no cache, no index) is written inside it.

    An image file Pillow cannot decode is an error naming the file, unless
    ``skip_bad_files=True``: then it is left out, listed in ``skipped`` and reported in one
    warning. Raises DataError for a missing root, a root that is not a directory, no class
    subfolders, a single class, a class folder with no (readable) images, or a bad file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 32,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        skip_bad_files: bool = False,
    ) -> None:
        image_size = _check_int("image_size", image_size, 1, 4096)
        self.root = Path(root)
        classes = _class_folders(self.root)
        self.classes = [c.name for c in classes]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.skipped: list[Path] = []
        self.paths: list[Path] = []
        arrays: list[np.ndarray] = []
        labels: list[int] = []
        for idx, cdir in enumerate(classes):
            files, other = _image_files(cdir)
            if not files:
                extra = f" ({other} file(s) with other extensions)" if other else ""
                raise DataError(
                    f"class folder {cdir} has no image files{extra}; expected files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)}"
                )
            good = 0
            for path in files:
                try:
                    arr = _read_image(path, image_size)
                except Exception as exc:  # noqa: BLE001
                    # Pillow reports corrupt data through many exception types (OSError,
                    # SyntaxError, DecompressionBombError, struct.error ...); all mean the
                    # same thing to the user: this file is not a usable image.
                    if not skip_bad_files:
                        raise DataError(
                            f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                            "remove or replace the file"
                        ) from exc
                    self.skipped.append(path)
                    continue
                arrays.append(arr)
                labels.append(idx)
                self.paths.append(path)
                good += 1
            if good == 0:
                raise DataError(
                    f"class folder {cdir} has no readable images ({len(files)} file(s) "
                    "could not be decoded)"
                )
        if self.skipped:
            shown = ", ".join(str(p) for p in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image file(s) under {self.root}: {shown}{more}",
                stacklevel=2,
            )
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        super().__init__(images, torch.tensor(labels, dtype=torch.int64),
                         transform=transform, mean=mean, std=std)


def _class_folders(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; expected a folder with one subfolder per class")
    classes = [Path(e.path) for e in _list_dir(root) if e.is_dir()]
    if not classes:
        raise DataError(
            f"data folder {root} has no class subfolders; expected {root}/<class name>/<image files>"
        )
    if len(classes) == 1:
        raise DataError(
            f"data folder {root} has only one class subfolder ({classes[0].name}); "
            "classification needs at least 2"
        )
    return classes


# ---------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CIFAR10Arrays:
    """CIFAR-10 in memory: images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]


class _ArrayUnpickler(pickle.Unpickler):
    # The batches are pickles; unpickling runs any callable the file names. Only the few
    # numpy reconstructors a pickled ndarray needs are allowed, so a tampered download
    # cannot execute code.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} is missing")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"CIFAR-10 batch {path} is corrupt or not a python pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 batch {path} holds a {type(obj).__name__}, expected a dict")
    # Python-2 pickles read with latin1 have str keys; python-3 re-pickles keep bytes keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if "fine_labels" in d and "labels" not in d:
        raise DataError(f"{path} is a CIFAR-100 batch; only CIFAR-10 is supported")
    if "data" not in d or "labels" not in d:
        raise DataError(f"CIFAR-10 batch {path} lacks the 'data' or 'labels' entry (has {sorted(map(str, d))})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR-10 batch {path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"CIFAR-10 batch {path}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {path}: labels must be in [0, 9], got [{labels.min()}, {labels.max()}]")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(path: str | os.PathLike) -> CIFAR10Arrays:
    """Read the CIFAR-10 *python* batches into uint8 tensors.

    ``path`` is the ``cifar-10-batches-py`` folder of ``cifar-10-python.tar.gz`` or its
    parent. Reads ``data_batch_1`` .. ``data_batch_5`` (train, ``[50000, 3, 32, 32]``),
    ``test_batch`` (``[10000, 3, 32, 32]``) and ``batches.meta`` (class names; the official
    names are used if it is absent). Only numpy arrays are unpickled (no code runs).
    Raises DataError naming the folder or batch that is missing or corrupt.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"CIFAR-10 folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; expected the cifar-10-batches-py folder or its parent")
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    if not (folder / "data_batch_1").exists() and not (folder / "test_batch").exists():
        hint = ""
        if (folder / "data_batch_1.bin").exists() or (root / "cifar-10-batches-bin").is_dir():
            hint = " (found the binary version; the python version cifar-10-python.tar.gz is needed)"
        raise DataError(
            f"{root} holds no CIFAR-10 python batches{hint}; expected data_batch_1..5 and "
            "test_batch, i.e. the cifar-10-batches-py folder or its parent"
        )
    train = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = _cifar_batch(folder / "test_batch")
    names = CIFAR10_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.exists():
        meta = _unpickle(meta_path)
        raw = meta.get("label_names")
        if not isinstance(raw, (list, tuple)) or len(raw) != 10:
            raise DataError(f"{meta_path}: 'label_names' must be a list of 10 names, got {raw!r:.80}")
        names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw)
    return CIFAR10Arrays(
        train_images=torch.cat([b[0] for b in train]),
        train_labels=torch.cat([b[1] for b in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=names,
    )


# ---------------------------------------------------------------------------------------
# Splits, loaders, the CLI entry point
# ---------------------------------------------------------------------------------------

def split_indices(
    n: int, fraction: float, *, seed: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint split of ``range(n)``: ``(idx_a, idx_b)``, int64, each sorted.

    ``idx_a`` holds ``round(n * fraction)`` indices (at least one, leaving at least one
    for ``idx_b``), chosen by a generator seeded with ``seed``. With ``labels`` ``[n]`` the
    split is stratified: each class is split by ``fraction`` on its own (a class with one
    image goes to ``idx_a``).
    """
    n = _check_int("n", n, 0)
    if not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"split fraction must be in (0, 1), got {fraction!r}")
    if n < 2:
        raise DataError(f"cannot split a data set of {n} image(s) into two non-empty parts")
    g = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    if labels is None:
        groups = [torch.arange(n)]
    else:
        if labels.shape != (n,):
            raise DataError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
        groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    part_a, part_b = [], []
    for grp in groups:
        perm = grp[torch.randperm(len(grp), generator=g)]
        k = round(len(grp) * float(fraction))
        k = min(max(k, 1), len(grp) - 1) if len(grp) > 1 else len(grp)
        part_a.append(perm[:k])
        part_b.append(perm[k:])
    a, b = torch.cat(part_a), torch.cat(part_b)
    if len(b) == 0:  # only single-image classes: move one over so both parts are usable
        a, b = a[:-1], a[-1:]
    return a.sort().values, b.sort().values


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose order is reproducible: shuffling and worker seeds come from a
    ``torch.Generator`` seeded with ``seed``.

    Iterating it again continues that generator, so epoch ``k``'s order depends on
    ``(seed, k)``: two runs agree epoch by epoch. Batches are ``(images float [B, C, H, W],
    labels int64 [B])``.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    g = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=g,
        persistent_workers=False,
    )


@dataclass
class DataBundle:
    """What the search and the trainer need from a data set.

    ``train`` yields augmented items, ``val`` plain ones; both are
    ``(image float [C, image_size, image_size], label)``, normalised by ``mean``/``std``
    (per-channel statistics of the training images).
    """

    train: TensorImageDataset
    val: TensorImageDataset
    num_classes: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


def _subsample(
    images: torch.Tensor, labels: torch.Tensor, count: int | None, seed: int, what: str, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if count is None:
        return images, labels
    count = _check_int(f"num_{what}", count, 1)
    if count > len(labels):
        raise DataError(f"asked for {count} {what} images but {source} has only {len(labels)}")
    if count == len(labels):
        return images, labels
    idx, _ = split_indices(len(labels), count / len(labels), seed=seed, labels=labels)
    # Stratified rounding can miss the exact count by a few; trim or top up deterministically.
    if len(idx) != count:
        g = torch.Generator().manual_seed(seed)
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[idx] = False
        others = torch.nonzero(rest).flatten()
        if len(idx) > count:
            idx = idx[torch.randperm(len(idx), generator=g)[:count]].sort().values
        else:
            extra = others[torch.randperm(len(others), generator=g)[: count - len(idx)]]
            idx = torch.cat([idx, extra]).sort().values
    return images[idx], labels[idx]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _bundle(
    train_images: torch.Tensor, train_labels: torch.Tensor,
    val_images: torch.Tensor, val_labels: torch.Tensor,
    class_names: Sequence[str], image_size: int, seed: int, description: str,
) -> DataBundle:
    mean, std = channel_stats(train_images)
    aug = RandomCropFlip(padding=max(1, round(image_size / 8)),
                         generator=torch.Generator().manual_seed(seed))
    return DataBundle(
        train=TensorImageDataset(train_images, train_labels, transform=aug, mean=mean, std=std),
        val=TensorImageDataset(val_images, val_labels, mean=mean, std=std),
        num_classes=len(class_names),
        image_size=image_size,
        class_names=tuple(class_names),
        mean=mean,
        std=std,
        description=description,
    )


def build_datasets(
    spec: str,
    *,
    image_size: int = 32,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    skip_bad_files: bool = False,
) -> DataBundle:
    """Build train (augmented) and val data sets from a spec string.

    Specs:
      * ``"synthetic"``: :func:`make_synthetic` shapes; ``num_train`` defaults to
        :data:`SYNTHETIC_NUM_TRAIN` (6000), ``num_val`` to :data:`SYNTHETIC_NUM_VAL` (2000);
        the val images come from a separate seeded stream, so they never overlap train.
      * ``"cifar10:PATH"``: :func:`load_cifar10`; train is the 50,000 training images, val
        the 10,000 test images, resized if ``image_size != 32``.
      * ``"folder:PATH"``: :class:`ImageFolderDataset`. If PATH has ``train/`` and ``val/``
        subfolders they are used (same class folders required); otherwise a stratified
        split seeded by ``seed`` puts :data:`FOLDER_TRAIN_FRACTION` (80 %) in train.

    For cifar10 and folder, ``num_train``/``num_val`` take a seeded stratified subset.
    ``skip_bad_files`` is passed to :class:`ImageFolderDataset` (folder specs only).
    Raises ConfigError for a malformed spec, DataError for unusable data.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data spec must be 'synthetic', 'cifar10:PATH' or 'folder:PATH', got {spec!r}")
    image_size = _check_int("image_size", image_size, 8, 1024)
    seed = _check_int("seed", seed, 0)
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        if sep:
            raise ConfigError(f"data spec 'synthetic' takes no argument, got {spec!r}")
        n_tr = SYNTHETIC_NUM_TRAIN if num_train is None else _check_int("num_train", num_train, 1)
        n_va = SYNTHETIC_NUM_VAL if num_val is None else _check_int("num_val", num_val, 1)
        tr_x, tr_y = _synthetic(n_tr, seed, _STREAM_TRAIN, image_size, 10)
        va_x, va_y = _synthetic(n_va, seed, _STREAM_VAL, image_size, 10)
        desc = (f"synthetic shapes (seed {seed}): {n_tr} train / {n_va} val, "
                f"10 classes, {image_size}x{image_size}")
        return _bundle(tr_x, tr_y, va_x, va_y, SHAPE_FAMILIES, image_size, seed, desc)
    if kind not in ("cifar10", "folder"):
        raise ConfigError(f"unknown data spec {spec!r}; expected 'synthetic', 'cifar10:PATH' or 'folder:PATH'")
    if not arg:
        raise ConfigError(f"data spec {spec!r} needs a path, e.g. '{kind}:/data/{kind}'")
    path = Path(arg).expanduser()
    if kind == "cifar10":
        c = load_cifar10(path)
        tr_x, tr_y = _subsample(c.train_images, c.train_labels, num_train, seed, "train", f"CIFAR-10 at {path}")
        va_x, va_y = _subsample(c.test_images, c.test_labels, num_val, seed + 1, "val", f"CIFAR-10 at {path}")
        tr_x, va_x = _resize(tr_x, image_size), _resize(va_x, image_size)
        names = c.class_names
        desc = f"CIFAR-10 at {path}: {len(tr_y)} train / {len(va_y)} val (test batch), {image_size}x{image_size}"
    else:
        train_dir, val_dir = path / "train", path / "val"
        if train_dir.is_dir() != val_dir.is_dir():
            have, missing = (train_dir, val_dir) if train_dir.is_dir() else (val_dir, train_dir)
            raise DataError(f"{path} has {have.name}/ but no {missing.name}/; provide both or neither "
                            "(then a seeded 80/20 split is made)")
        if train_dir.is_dir():
            tr = ImageFolderDataset(train_dir, image_size, skip_bad_files=skip_bad_files)
            va = ImageFolderDataset(val_dir, image_size, skip_bad_files=skip_bad_files)
            if tr.classes != va.classes:
                only_tr = sorted(set(tr.classes) - set(va.classes))
                only_va = sorted(set(va.classes) - set(tr.classes))
                raise DataError(f"class folders differ between {train_dir} and {val_dir}: "
                                f"only in train {only_tr}, only in val {only_va}")
            tr_x, tr_y, va_x, va_y = tr.images, tr.labels, va.images, va.labels
            how = "train/ and val/ folders"
        else:
            full = ImageFolderDataset(path, image_size, skip_bad_files=skip_bad_files)
            a, b = split_indices(len(full), FOLDER_TRAIN_FRACTION, seed=seed, labels=full.labels)
            tr_x, tr_y, va_x, va_y = full.images[a], full.labels[a], full.images[b], full.labels[b]
            tr = full
            how = f"seeded {round(FOLDER_TRAIN_FRACTION * 100)}/{round(100 - FOLDER_TRAIN_FRACTION * 100)} split"
        tr_x, tr_y = _subsample(tr_x, tr_y, num_train, seed, "train", f"folder {path}")
        va_x, va_y = _subsample(va_x, va_y, num_val, seed + 1, "val", f"folder {path}")
        names = tuple(tr.classes)
        desc = (f"image folder {path} ({how}): {len(tr_y)} train / {len(va_y)} val, "
                f"{len(names)} classes, {image_size}x{image_size}")
    return _bundle(tr_x, tr_y, va_x, va_y, names, image_size, seed, desc)


# ---------------------------------------------------------------------------------------
# Difficulty calibration (python -m fbnet_fast.data --calibrate)
# ---------------------------------------------------------------------------------------

def _calibrate(
    *, epochs: int = 5, num_train: int = 8000, num_val: int = 2000, seed: int = 0,
    kernel: int = 3, width: float = 1.0, repeats: int = 1, threads: int | None = None,
) -> float:
    """Train the reference small CNN on the synthetic set; returns the final val accuracy.

    Model: conv-BN-ReLU stages of 16, 32, 48, 64 channels (times ``width``) with strides
    1, 2, 2, 2, each stage ``repeats`` layers deep, ``kernel`` x ``kernel`` convolutions,
    global average pool, linear. SGD (lr 0.05, momentum 0.9, weight decay 5e-4), cosine
    schedule, batch 64, the training augmentation of :func:`build_datasets`.
    """
    import time

    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    make_synthetic(20000, seed=seed)
    print(f"generated 20000 images in {time.perf_counter() - t0:.2f} s")
    bundle = build_datasets("synthetic", seed=seed, num_train=num_train, num_val=num_val)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for i, c in enumerate((16, 32, 48, 64)):
        cout = max(8, round(c * width))
        for r in range(repeats):
            stride = 2 if (i > 0 and r == 0) else 1
            layers += [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))
    params = sum(p.numel() for p in model.parameters())
    train = make_loader(bundle.train, 64, shuffle=True, seed=seed, drop_last=True)
    val = make_loader(bundle.val, 256, shuffle=False, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(train))
    acc = 0.0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
        acc = correct / len(bundle.val)
        print(f"epoch {epoch + 1}: val accuracy {acc:.3f} "
              f"({params} parameters, {time.perf_counter() - t0:.0f} s)", flush=True)
    return acc


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="fbnet_fast data utilities")
    parser.add_argument("--calibrate", action="store_true", help="measure the synthetic set's difficulty")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.calibrate:
        _calibrate(epochs=args.epochs, num_train=args.num_train, seed=args.seed,
                   kernel=args.kernel, width=args.width, repeats=args.repeats, threads=args.threads)
    else:
        parser.print_help()
