"""The generated default data set (``"synthetic"``): procedural shapes, no download.

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

Calibrate: ``python -m fbnet_fast.data --calibrate --seed S --threads 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .batching import check_int

# Default sizes of the "synthetic" spec: small enough that the default search (warm-up +
# search epochs on 2 CPU cores) finishes in minutes, large enough that the 20 % architecture
# split (1,200 images) gives a usable gradient signal for theta.
SYNTHETIC_NUM_TRAIN = 6000
SYNTHETIC_NUM_VAL = 2000

SHAPE_FAMILIES = (
    "disc", "ring", "square", "frame", "triangle",
    "cross", "stripes", "checker", "pair", "bar",
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



def _synthetic(
    num_images: int, seed: int, stream: int, image_size: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    num_images = check_int("num_images", num_images, 0)
    seed = check_int("seed", seed, 0)
    image_size = check_int("image_size", image_size, 8, 1024)
    num_classes = check_int("num_classes", num_classes, 2, len(SHAPE_FAMILIES))
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
    num_images: int, *, seed: int = 0, image_size: int = 32, num_classes: int = 10, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the default data set: procedural shapes on cluttered backgrounds.

    Returns ``(images, labels)``: images uint8 ``[num_images, 3, image_size, image_size]``,
    labels int64 ``[num_images]`` in ``[0, num_classes)``, balanced to within one image
    per class. Class ``c`` is the shape family ``SHAPE_FAMILIES[c]``. Image ``i`` depends
    only on ``(seed, i, image_size, num_classes)``, not on ``num_images``.

    Raises ConfigError for a negative count or seed, ``image_size`` outside [8, 1024] or
    ``num_classes`` outside [2, 10]. ``split`` ``"train"`` or ``"val"`` picks one of two disjoint
    streams, so a seed's validation images are never among its training images.
    """
    streams = {"train": _STREAM_TRAIN, "val": _STREAM_VAL}
    if split not in streams:
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    return _synthetic(num_images, seed, streams[split], image_size, num_classes)
