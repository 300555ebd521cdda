"""Tests of fbnet_fast.data: generated set, augmentation, folders, CIFAR-10, splits, loaders."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fbnet_fast import data as D
from fbnet_fast.errors import ConfigError, DataError


# ---------------------------------------------------------------------------------------
# Generated data set
# ---------------------------------------------------------------------------------------

def test_synthetic_same_seed_identical_bytes():
    a_x, a_y = D.make_synthetic(120, seed=3)
    b_x, b_y = D.make_synthetic(120, seed=3)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)


def test_synthetic_different_seed_differs():
    a_x, _ = D.make_synthetic(60, seed=0)
    b_x, _ = D.make_synthetic(60, seed=1)
    assert not torch.equal(a_x, b_x)


def test_synthetic_image_independent_of_count():
    # 300 crosses the first chunk boundary; a prefix must not depend on the total.
    big_x, big_y = D.make_synthetic(300, seed=5)
    small_x, small_y = D.make_synthetic(37, seed=5)
    assert torch.equal(big_x[:37], small_x) and torch.equal(big_y[:37], small_y)


def test_synthetic_other_sizes_are_prefix_stable():
    # Chunks shrink with the image area; the prefix property must still hold.
    big_x, _ = D.make_synthetic(70, seed=0, image_size=96)
    small_x, _ = D.make_synthetic(25, seed=0, image_size=96)
    assert big_x.shape == (70, 3, 96, 96) and torch.equal(big_x[:25], small_x)


def test_synthetic_shapes_dtypes_and_range():
    x, y = D.make_synthetic(50, seed=0, image_size=24, num_classes=4)
    assert x.shape == (50, 3, 24, 24) and x.dtype == torch.uint8
    assert y.shape == (50,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < 4


def test_synthetic_zero_images():
    x, y = D.make_synthetic(0)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0,)


@pytest.mark.parametrize("n", [200, 207])  # 207: not a multiple of the class count
def test_synthetic_balanced(n):
    _, y = D.make_synthetic(n, seed=2)
    counts = torch.bincount(y, minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    assert int(counts.sum()) == n


def test_synthetic_not_separable_by_mean_colour():
    # Nearest class-mean of the per-image mean colour, fitted on one seed, scored on another.
    tr_x, tr_y = D.make_synthetic(1000, seed=0)
    te_x, te_y = D.make_synthetic(1000, seed=1)
    f_tr = tr_x.float().mean(dim=(2, 3))
    f_te = te_x.float().mean(dim=(2, 3))
    centroids = torch.stack([f_tr[tr_y == c].mean(0) for c in range(10)])
    pred = torch.cdist(f_te, centroids).argmin(1)
    acc = float((pred == te_y).float().mean())
    assert acc < 0.30, acc


def test_synthetic_images_are_not_constant():
    x, _ = D.make_synthetic(20, seed=0)
    assert float(x.float().std(dim=(1, 2, 3)).min()) > 5.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_images=-1), dict(num_images=4, seed=-1), dict(num_images=4, num_classes=1),
     dict(num_images=4, num_classes=11), dict(num_images=4, image_size=4),
     dict(num_images=2.5)],
)
def test_synthetic_bad_arguments(kwargs):
    n = kwargs.pop("num_images")
    with pytest.raises(ConfigError):
        D.make_synthetic(n, **kwargs)


# ---------------------------------------------------------------------------------------
# Augmentation and tensor data set
# ---------------------------------------------------------------------------------------

def _image(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=g)


def test_augmentation_deterministic_under_generator():
    img = _image()
    a = D.RandomCropFlip(generator=torch.Generator().manual_seed(7))
    b = D.RandomCropFlip(generator=torch.Generator().manual_seed(7))
    outs_a = [a(img) for _ in range(10)]
    outs_b = [b(img) for _ in range(10)]
    assert all(torch.equal(p, q) for p, q in zip(outs_a, outs_b))
    assert all(o.shape == img.shape and o.dtype == img.dtype for o in outs_a)
    # Ten draws from 81 offsets x 2 flips: at least two must differ.
    assert any(not torch.equal(outs_a[0], o) for o in outs_a[1:])


def test_augmentation_is_a_shifted_padded_window():
    img = _image(1)
    out = D.RandomCropFlip(padding=4, flip=False, generator=torch.Generator().manual_seed(0))(img)
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    windows = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    assert any(torch.equal(out, w) for w in windows)


def test_augmentation_identity_without_padding_or_flip():
    img = _image(2)
    assert torch.equal(D.RandomCropFlip(padding=0, flip=False)(img), img)


def test_tensor_dataset_normalises():
    x, y = D.make_synthetic(40, seed=0)
    ds = D.TensorImageDataset(x, y)
    item, label = ds[3]
    assert item.dtype == torch.float32 and item.shape == (3, 32, 32)
    assert isinstance(label, int) and label == int(y[3])
    stacked = torch.stack([ds[i][0] for i in range(len(ds))])
    # Default statistics are the data set's own: the normalised data has mean 0, std 1.
    assert torch.allclose(stacked.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(stacked.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    fixed = D.TensorImageDataset(x, y, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    expect = (x[0].float() / 255 - 0.5) / 0.25
    assert torch.allclose(fixed[0][0], expect, atol=1e-6)


def test_tensor_dataset_rejects_bad_tensors():
    x, y = D.make_synthetic(4)
    with pytest.raises(DataError, match="uint8"):
        D.TensorImageDataset(x.float(), y)
    with pytest.raises(DataError, match="labels"):
        D.TensorImageDataset(x, y[:3])
    with pytest.raises(DataError, match="mean and std"):
        D.TensorImageDataset(x, y, mean=(0.5,), std=(0.5,))


# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------

def _write_png(path: Path, colour, size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def _make_tree(root: Path, classes=("cat", "ant", "bee"), per_class=5):
    for ci, name in enumerate(classes):
        for i in range(per_class):
            _write_png(root / name / f"img{i}.png", (40 * ci, 10 * i, 200))
    return root


def _snapshot(root: Path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    st = root.stat()
    out["."] = (st.st_mtime_ns, None)
    return out


def test_image_folder_reads_sorted_classes(tmp_path):
    root = _make_tree(tmp_path / "data")
    ds = D.ImageFolderDataset(root, 16)
    assert ds.classes == ["ant", "bee", "cat"]
    assert ds.class_to_idx == {"ant": 0, "bee": 1, "cat": 2}
    assert ds.images.shape == (15, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [5, 5, 5]
    # Written in the order cat, ant, bee with red 0, 40, 80: labels follow the sorted names.
    for name, red in (("cat", 0), ("ant", 40), ("bee", 80)):
        imgs = ds.images[ds.labels == ds.class_to_idx[name]]
        assert int(imgs[:, 0].min()) == int(imgs[:, 0].max()) == red
    x, label = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label == 0


def test_image_folder_modes_and_extensions(tmp_path):
    root = tmp_path / "data"
    _write_png(root / "a" / "gray.PNG", 128, mode="L")
    _write_png(root / "a" / "rgba.png", (1, 2, 3, 4), mode="RGBA")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "a" / "photo.JPG", format="JPEG")
    (root / "b").mkdir()
    Image.new("P", (9, 9), 3).save(root / "b" / "anim.gif")
    Image.new("RGB", (33, 64), (0, 0, 255)).save(root / "b" / "tall.bmp")
    Image.new("RGB", (8, 8), (0, 9, 0)).save(root / "b" / "w.webp")
    (root / "b" / "notes.txt").write_text("not an image, ignored by extension")
    ds = D.ImageFolderDataset(root, image_size=8)
    assert len(ds) == 6
    assert ds.images.shape == (6, 3, 8, 8)
    gray = ds.images[[p.name for p in ds.paths].index("gray.PNG")]
    assert int(gray.min()) == int(gray.max()) == 128


def test_image_folder_centre_crop_of_non_square(tmp_path):
    root = tmp_path / "data"
    # Left third red, middle third green, right third blue: a centre crop keeps green.
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 255, 0), (10, 0, 20, 10))
    img.paste((0, 0, 255), (20, 0, 30, 10))
    (root / "x").mkdir(parents=True)
    img.save(root / "x" / "wide.png")
    _write_png(root / "y" / "one.png", (0, 0, 0))
    ds = D.ImageFolderDataset(root, image_size=10)
    wide = ds.images[0]
    assert int(wide[1, 5, 5]) == 255 and int(wide[0, 5, 5]) == 0


def test_image_folder_ignores_hidden_and_follows_links_once(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"), per_class=2)
    _write_png(root / "__MACOSX" / "a" / "._img0.png", (0, 0, 0))  # would be a 3rd class
    (root / "a" / ".DS_Store").write_bytes(b"\x00")
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    ds = D.ImageFolderDataset(root, 8)
    assert ds.classes == ["a", "b"] and len(ds) == 4


def test_image_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(missing)
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)


def test_image_folder_not_a_directory(tmp_path):
    f = tmp_path / "file.png"
    _write_png(f, (0, 0, 0))
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(f)
    assert str(f) in str(e.value) and "not a directory" in str(e.value)


def test_image_folder_empty(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(root)
    assert str(root) in str(e.value) and "no class subfolders" in str(e.value)


def test_image_folder_files_but_no_class_subfolders(tmp_path):
    root = tmp_path / "flat"
    _write_png(root / "a.png", (0, 0, 0))
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(root)
    assert str(root) in str(e.value) and "no class subfolders" in str(e.value)


def test_image_folder_one_class(tmp_path):
    root = _make_tree(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(root)
    assert str(root) in str(e.value) and "only one class" in str(e.value)


def test_image_folder_class_without_images(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"))
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(root)
    assert str(root / "c") in str(e.value) and "no image files" in str(e.value)


def test_image_folder_bad_file_is_an_error_naming_it(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"))
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(root)
    # The message is read by CLI users too: it must not advise a Python-only keyword.
    assert str(bad) in str(e.value) and "remove or replace" in str(e.value)
    assert "skip_bad_files" not in str(e.value)


def test_image_folder_truncated_file_is_an_error(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"))
    good = root / "a" / "img0.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good)
    cut = root / "a" / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError) as e:
        D.ImageFolderDataset(root)
    assert str(cut) in str(e.value)


def test_image_folder_skip_bad_files_warns(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"), per_class=3)
    bad = root / "a" / "broken.jpg"
    bad.write_bytes(b"\x00" * 50)
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = D.ImageFolderDataset(root, skip_bad_files=True)
    assert ds.skipped == [bad]
    assert len(ds) == 6


def test_build_folder_skip_bad_files(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"), per_class=5)
    (root / "a" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError):
        D.build_datasets(f"folder:{root}", image_size=8)
    with pytest.warns(UserWarning, match="broken.png"):
        bundle = D.build_datasets(f"folder:{root}", image_size=8, skip_bad_files=True)
    assert len(bundle.train) + len(bundle.val) == 10


def test_image_folder_class_with_only_bad_files(tmp_path):
    root = _make_tree(tmp_path / "data", classes=("a", "b"), per_class=2)
    for p in (root / "b").iterdir():
        p.write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as e:
            D.ImageFolderDataset(root, skip_bad_files=True)
    assert str(root / "b") in str(e.value) and "no readable images" in str(e.value)


def test_image_folder_is_never_written(tmp_path):
    root = _make_tree(tmp_path / "data")
    (root / "cat" / "bad.png").write_bytes(b"nope")
    before = _snapshot(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        D.ImageFolderDataset(root, skip_bad_files=True)
    (root / "cat" / "bad.png").unlink()
    before.pop("cat/bad.png")
    before_after_unlink = _snapshot(root)
    D.build_datasets(f"folder:{root}", image_size=16)
    assert _snapshot(root) == before_after_unlink
    assert set(before) == set(before_after_unlink)


def test_build_folder_split_is_seeded_and_stratified(tmp_path):
    root = _make_tree(tmp_path / "data", per_class=10)
    a = D.build_datasets(f"folder:{root}", image_size=8, seed=1)
    b = D.build_datasets(f"folder:{root}", image_size=8, seed=1)
    c = D.build_datasets(f"folder:{root}", image_size=8, seed=2)
    assert len(a.train) == 24 and len(a.val) == 6
    assert torch.bincount(a.val.labels).tolist() == [2, 2, 2]
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert a.class_names == ("ant", "bee", "cat") and a.num_classes == 3
    assert a.train.transform is not None and a.val.transform is None
    assert "folder" in a.description and str(root) in a.description


def test_build_folder_with_train_and_val(tmp_path):
    root = tmp_path / "data"
    _make_tree(root / "train", classes=("x", "y"), per_class=4)
    _make_tree(root / "val", classes=("x", "y"), per_class=2)
    bundle = D.build_datasets(f"folder:{root}", image_size=8)
    assert len(bundle.train) == 8 and len(bundle.val) == 4
    assert bundle.class_names == ("x", "y")
    assert "train/ and val/" in bundle.description


def test_build_folder_train_without_val(tmp_path):
    root = tmp_path / "data"
    _make_tree(root / "train", classes=("x", "y"))
    with pytest.raises(DataError) as e:
        D.build_datasets(f"folder:{root}")
    assert str(root) in str(e.value) and "val/" in str(e.value)


def test_build_folder_mismatched_classes(tmp_path):
    root = tmp_path / "data"
    _make_tree(root / "train", classes=("x", "y"))
    _make_tree(root / "val", classes=("x", "z"))
    with pytest.raises(DataError) as e:
        D.build_datasets(f"folder:{root}")
    assert str(root / "train") in str(e.value) and "'z'" in str(e.value)


def test_build_folder_subsets(tmp_path):
    root = _make_tree(tmp_path / "data", per_class=10)
    bundle = D.build_datasets(f"folder:{root}", image_size=8, num_train=9, num_val=3)
    assert len(bundle.train) == 9 and len(bundle.val) == 3
    with pytest.raises(DataError) as e:
        D.build_datasets(f"folder:{root}", image_size=8, num_train=1000)
    assert str(root) in str(e.value)


# ---------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------

def _cifar_batch(n, seed, label_offset=0):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        b"labels": [int((i + label_offset) % 10) for i in range(n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def _write_cifar(parent: Path, n=20) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_batch(n, i, i), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(n, 99), f, protocol=2)
    meta = {b"num_cases_per_batch": n, b"label_names": [n.encode() for n in D.CIFAR10_CLASSES],
            b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def test_cifar_reads_batches(tmp_path):
    folder = _write_cifar(tmp_path)
    c = D.load_cifar10(folder)
    assert c.train_images.shape == (100, 3, 32, 32) and c.train_images.dtype == torch.uint8
    assert c.train_labels.shape == (100,) and c.train_labels.dtype == torch.int64
    assert c.test_images.shape == (20, 3, 32, 32)
    assert c.class_names == D.CIFAR10_CLASSES
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major.
    raw = _cifar_batch(20, 1, 1)[b"data"]
    assert torch.equal(c.train_images[0, 1], torch.from_numpy(raw[0, 1024:2048].reshape(32, 32)))
    assert c.train_labels[:3].tolist() == [1, 2, 3]
    # The parent folder works too.
    assert torch.equal(D.load_cifar10(tmp_path).test_images, c.test_images)


def test_cifar_missing_batch(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path)
    assert str(folder / "data_batch_3") in str(e.value) and "missing" in str(e.value)


def test_cifar_corrupt_batch(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError) as e:
        D.load_cifar10(folder)
    assert str(folder / "test_batch") in str(e.value) and "corrupt" in str(e.value)


def test_cifar_wrong_shape(tmp_path):
    folder = _write_cifar(tmp_path)
    batch = _cifar_batch(4, 0)
    batch[b"data"] = batch[b"data"][:, :100]
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DataError) as e:
        D.load_cifar10(folder)
    assert str(folder / "data_batch_2") in str(e.value) and "3072" in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_refuses_code_in_pickle(tmp_path):
    folder = _write_cifar(tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError) as e:
        D.load_cifar10(folder)
    assert str(folder / "data_batch_1") in str(e.value) and "refusing" in str(e.value)


def test_cifar_folder_without_batches(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path / "junk")
    assert str(tmp_path / "junk") in str(e.value) and "data_batch_1" in str(e.value)
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(e.value)


def test_build_cifar_bundle(tmp_path):
    _write_cifar(tmp_path)
    bundle = D.build_datasets(f"cifar10:{tmp_path}", num_train=50, image_size=16, seed=0)
    assert len(bundle.train) == 50 and len(bundle.val) == 20
    assert bundle.train.images.shape == (50, 3, 16, 16)
    assert bundle.num_classes == 10 and bundle.class_names[0] == "airplane"
    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [5] * 10


# ---------------------------------------------------------------------------------------
# build_datasets, splits and loaders
# ---------------------------------------------------------------------------------------

def test_build_synthetic_bundle():
    bundle = D.build_datasets("synthetic", num_train=60, num_val=30, seed=4)
    assert len(bundle.train) == 60 and len(bundle.val) == 30
    assert bundle.num_classes == 10 and bundle.image_size == 32
    assert bundle.class_names == D.SHAPE_FAMILIES
    assert len(bundle.mean) == 3 and len(bundle.std) == 3
    assert bundle.train.mean == bundle.val.mean == bundle.mean
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    # Validation images come from a separate stream: none equals a training image.
    tr = bundle.train.images.flatten(1)
    va = bundle.val.images.flatten(1)
    assert not (tr[:, None, :] == va[None, :, :]).all(-1).any()
    assert "synthetic" in bundle.description


def test_build_synthetic_defaults_are_documented_constants():
    assert D.SYNTHETIC_NUM_TRAIN == 6000 and D.SYNTHETIC_NUM_VAL == 2000


@pytest.mark.parametrize("spec", ["imagenet:/x", "cifar10:", "folder:", "synthetic:3", "", "  "])
def test_build_bad_spec(spec):
    with pytest.raises(ConfigError):
        D.build_datasets(spec)


def test_build_missing_paths(tmp_path):
    with pytest.raises(DataError) as e:
        D.build_datasets(f"folder:{tmp_path / 'gone'}")
    assert str(tmp_path / "gone") in str(e.value)
    with pytest.raises(DataError) as e:
        D.build_datasets(f"cifar10:{tmp_path / 'gone'}")
    assert str(tmp_path / "gone") in str(e.value)


def test_split_indices_disjoint_deterministic():
    a, b = D.split_indices(101, 0.8, seed=3)
    assert len(a) == 81 and len(b) == 20
    assert sorted(torch.cat([a, b]).tolist()) == list(range(101))
    a2, b2 = D.split_indices(101, 0.8, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    a3, _ = D.split_indices(101, 0.8, seed=4)
    assert not torch.equal(a, a3)


def test_split_indices_stratified():
    labels = torch.arange(100) % 4
    a, b = D.split_indices(100, 0.8, seed=0, labels=labels)
    assert torch.bincount(labels[b]).tolist() == [5, 5, 5, 5]
    assert not set(a.tolist()) & set(b.tolist())


def test_split_indices_errors():
    with pytest.raises(ConfigError):
        D.split_indices(10, 1.0, seed=0)
    with pytest.raises(DataError):
        D.split_indices(1, 0.5, seed=0)


def _epoch_labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loader_reproducible_order():
    x, y = D.make_synthetic(40, seed=0)
    ds = D.TensorImageDataset(x, torch.arange(40))
    l1 = D.make_loader(ds, 8, shuffle=True, seed=5)
    l2 = D.make_loader(ds, 8, shuffle=True, seed=5)
    first, second = _epoch_labels(l1), _epoch_labels(l1)
    assert first == _epoch_labels(l2) and second == _epoch_labels(l2)
    assert first != second  # each epoch reshuffles
    assert first != _epoch_labels(D.make_loader(ds, 8, shuffle=True, seed=6))
    assert _epoch_labels(D.make_loader(ds, 8, shuffle=False, seed=0)) == list(range(40))
    assert len(D.make_loader(ds, 16, shuffle=True, seed=0, drop_last=True)) == 2


def test_augmented_batches_reproducible():
    def first_batch():
        bundle = D.build_datasets("synthetic", num_train=32, num_val=10, seed=1)
        return next(iter(D.make_loader(bundle.train, 16, shuffle=True, seed=2)))

    (x1, y1), (x2, y2) = first_batch(), first_batch()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_augmented_batches_reproducible_with_workers():
    bundle = D.build_datasets("synthetic", num_train=32, num_val=10, seed=1)

    def batches():
        loader = D.make_loader(bundle.train, 8, shuffle=True, seed=3, num_workers=2)
        return torch.cat([x for x, _ in loader])

    a, b = batches(), batches()
    assert torch.equal(a, b)
