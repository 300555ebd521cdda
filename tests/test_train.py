"""Training from scratch: it learns, it resumes bit-identically, it keeps the best model, users' data."""

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch

import fbnet_fast.data as data_mod
from conftest import make_tiny_space
from fbnet_fast.data import build_datasets
from fbnet_fast.errors import ConfigError
from fbnet_fast.model import load_model_file
from fbnet_fast.ops import _ext
from fbnet_fast.space import Architecture, Stage
from fbnet_fast.train import TrainConfig, Trainer, run_training

QUIET = dict(progress=False)


def _arch(space, blocks):
    return Architecture(tuple(blocks), space.name, space.fingerprint)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def folder_digest(root) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root`` with its size and content hash (mtime excluded on purpose:
    the checks are about writes, and a read does not change the content or the listing)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (0, "")
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (os.path.getsize(p), hashlib.sha256(fh.read()).hexdigest())
    return out


def write_fake_cifar(root, n_per_batch=12, seed=0):
    """CIFAR-10's python layout (data_batch_1..5, test_batch, batches.meta) with random images."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
             b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"filenames": [f"{i}.png".encode() for i in range(n_per_batch)]}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in data_mod.CIFAR10_CLASSES]}, f)
    return root


# ---- it learns ----------------------------------------------------------------------------------

# A 13k-parameter net: the stem's stride 2 sees the full 32x32 image while the blocks run
# at 16x16 and below, ~2 MFLOPs per image.
LEARN_SPACE = dict(input_size=32, stem_filters=16, stem_stride=2,
                   stages=[Stage(16, 1, 1), Stage(24, 1, 2), Stage(32, 1, 2)], head_filters=64)


def test_training_on_default_data_improves_val_accuracy(tmp_path):
    # The default data ("synthetic" spec: 10 shape classes at 32x32), 2000 images, 8 epochs of
    # 62 steps. Measured over 2 data/training seeds: val top-1 0.11-0.12 after epoch 1,
    # 0.31-0.33 after epoch 8; the check asks for +0.05.
    data = build_datasets("synthetic", image_size=32, seed=0, num_train=2000, num_val=500)
    space = make_tiny_space(**LEARN_SPACE)
    cfg = TrainConfig(epochs=8, batch_size=32, lr=0.05, dropout=0.0, augment=False, seed=0, **QUIET)
    summary = run_training(cfg, space, _arch(space, ["k3_e3"] * 3), tmp_path, data=data, log=lambda m: None)
    hist = _metrics(tmp_path)
    assert [h["epoch"] for h in hist] == list(range(1, 9))
    first, late = hist[0], hist[-3:]
    # 500 val images: one standard error of an accuracy near 0.15 is 0.016, so +0.05 is > 3 SE
    assert max(h["val_acc"] for h in late) >= first["val_acc"] + 0.05, [h["val_acc"] for h in hist]
    assert hist[-1]["val_loss"] < first["val_loss"]
    assert hist[-1]["train_loss"] < first["train_loss"]
    assert summary["best_val_acc"] == max(h["val_acc"] for h in hist)


# ---- checkpoints, resume, best model ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data():
    return build_datasets("synthetic", image_size=16, seed=0, num_train=192, num_val=64)


def _tiny_run(out, data, epochs=3, log=lambda m: None, **kw):
    space = make_tiny_space()
    cfg = TrainConfig(epochs=epochs, batch_size=32, keep_checkpoints=2, **QUIET, **kw)
    return run_training(cfg, space, _arch(space, ["k3_e1", "k3_e1_g2", "skip", "k5_e6", "k3_e3"]), out,
                        data=data, log=log)


def test_outputs_checkpoints_and_best_model(tmp_path, tiny_data):
    summary = _tiny_run(tmp_path, tiny_data)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["arch.json", "best.pt", "checkpoints", "config.json", "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-0002.pt", "ckpt-0003.pt"]
    hist = _metrics(tmp_path)
    best = max(hist, key=lambda h: h["val_acc"])  # first of the ties, as the trainer keeps it
    assert summary["best_val_acc"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    model, payload = load_model_file(tmp_path / "best.pt")
    assert payload["epoch"] == best["epoch"] and payload["val_acc"] == best["val_acc"]
    # best.pt reproduces the recorded accuracy on the held-out split
    val = tiny_data.val
    mean = torch.tensor(val.mean).view(1, 3, 1, 1)
    std = torch.tensor(val.std).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model((val.images.float() / 255 - mean) / std).argmax(1)
    assert float((pred == val.labels).float().mean()) == pytest.approx(best["val_acc"], abs=1e-9)
    arch_doc = json.loads((tmp_path / "arch.json").read_text())
    assert arch_doc["blocks"][3] == "k5_e6" and arch_doc["space_def"]["input_size"] == 16


def test_resume_is_bit_identical(tmp_path, tiny_data):
    _tiny_run(tmp_path / "straight", tiny_data)

    def stop_after_first_epoch(msg):
        if msg.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "cut", tiny_data, log=stop_after_first_epoch)
    assert len(_metrics(tmp_path / "cut")) == 1
    run_training(TrainConfig(**QUIET), None, None, tmp_path / "cut", resume=True, data=tiny_data,
                 log=lambda m: None)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "ckpt-0003.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "ckpt-0003.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = lambda hs: [{k: v for k, v in h.items() if k != "elapsed_s"} for h in hs]  # noqa: E731
    assert strip(_metrics(tmp_path / "straight")) == strip(_metrics(tmp_path / "cut"))


def test_refuses_to_overwrite_and_bad_options(tmp_path, tiny_data):
    from fbnet_fast.errors import RunDirError

    (tmp_path / "keep.txt").write_text("a user's file")
    with pytest.raises(RunDirError, match="already holds files"):
        _tiny_run(tmp_path, tiny_data, epochs=1)
    assert (tmp_path / "keep.txt").read_text() == "a user's file"
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.5).validate()
    with pytest.raises(ConfigError, match="lr_ramp_steps"):
        TrainConfig(lr_ramp_steps=-1).validate()
    space = make_tiny_space()
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(TrainConfig(batch_size=1000, **QUIET), space, _arch(space, ["skip"] * 5), tmp_path / "x",
                data=tiny_data)


def test_lr_ramps_linearly_then_follows_the_cosine(tmp_path, tiny_data):
    space = make_tiny_space()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.1, lr_ramp_steps=5, **QUIET)
    t = Trainer(cfg, space, _arch(space, ["skip"] * 5), tmp_path, data=tiny_data)
    total = cfg.epochs * t.steps_per_epoch
    lrs = []
    for _ in range(total):
        lrs.append(t.opt.param_groups[0]["lr"])
        t.opt.step()
        t.sched.step()
    cos = lambda s: 0.1 * 0.5 * (1 + np.cos(np.pi * s / total))  # noqa: E731
    assert lrs[:5] == pytest.approx([cos(s) * (s + 1) / 5 for s in range(5)])
    assert lrs[5:] == pytest.approx([cos(s) for s in range(5, total)])
    assert lrs[4] > lrs[3] > lrs[0] > 0


# ---- users' data: CIFAR batches (the image folder goes through the CLI in test_deploy_cli) ------

def test_train_on_cifar_batches_leaves_the_folder_unchanged(tmp_path):
    root = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    before = folder_digest(root)
    space = make_tiny_space()  # 16x16: the 32x32 batches are resized
    cfg = TrainConfig(data=f"cifar10:{tmp_path}", epochs=1, batch_size=16, **QUIET)
    s = run_training(cfg, space, _arch(space, ["k3_e1"] * 5), tmp_path / "out", log=lambda m: None)
    assert "CIFAR-10" in s["data"] and s["epochs"] == 1
    assert folder_digest(root) == before


def test_evaluation_with_bn_folded_is_the_eval_mode_model(tmp_path, tiny_data):
    """With eager blocks the trainer evaluates a copy with conv + BN folded; with the fused CPU kernels it
    evaluates the model itself in eval mode (running statistics): the same logits either way."""
    space = make_tiny_space()
    arch = _arch(space, ["k3_e1", "k3_e1_g2", "skip", "k5_e6", "k3_e3"])
    t = Trainer(TrainConfig(epochs=1, kernel="reference", **QUIET), space, arch, tmp_path / "ref", data=tiny_data,
                log=lambda m: None)
    t._train_epoch()  # BN statistics away from their initial values
    folded = t._eval_net()
    assert folded is not t.model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = t._prepare(tiny_data.val.images[:32], None)
    t.model.eval()
    with torch.no_grad():
        want, got = t.model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if not _ext.available():
        return
    fused = Trainer(TrainConfig(epochs=1, **QUIET), space, arch, tmp_path / "fused", data=tiny_data,
                    log=lambda m: None)
    fused.model.load_state_dict(t.model.state_dict())
    net = fused._eval_net()
    assert net is fused.model and not net.training and net.impl in ("auto", "cpp")
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_compile_reports_its_time_apart_and_trains_the_same_model(tmp_path, tiny_data):
    """--compile: compile time in the summary, apart from elapsed_s; the run still learns the same way
    (eager and compiled steps agree up to float32 reassociation, so the histories are close, not equal)."""
    space = make_tiny_space()
    arch = _arch(space, ["k3_e1", "k3_e1_g2", "skip", "k5_e6", "k3_e3"])
    # no dropout: compiled code draws its masks from its own generator
    eager = run_training(TrainConfig(epochs=1, dropout=0.0, **QUIET), space, arch, tmp_path / "eager",
                         data=tiny_data, log=lambda m: None)
    comp = run_training(TrainConfig(epochs=1, dropout=0.0, compile=True, **QUIET), space, arch, tmp_path / "comp",
                        data=tiny_data, log=lambda m: None)
    assert "compile_s" not in eager and comp["compile_s"] > 0
    a, b = _metrics(tmp_path / "eager")[0], _metrics(tmp_path / "comp")[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)


def test_fused_blocks_train_the_same_model_and_save_an_eager_one(tmp_path, tiny_data):
    """--kernel auto (the default) runs the steps through the fused kernels: the same history as the
    eager blocks up to float32 reassociation; the model files are plain eager modules."""
    if not _ext.available():
        pytest.skip("fbnet_fast._C not built")
    space = make_tiny_space()
    arch = _arch(space, ["k3_e1", "k3_e1_g2", "skip", "k5_e6", "k3_e3"])
    ref = run_training(TrainConfig(epochs=2, dropout=0.0, kernel="reference", **QUIET), space, arch,
                       tmp_path / "ref", data=tiny_data, log=lambda m: None)
    t = Trainer(TrainConfig(epochs=2, dropout=0.0, **QUIET), space, arch, tmp_path / "fused", data=tiny_data,
                log=lambda m: None)
    assert t.model.impl == "auto" and json.loads((tmp_path / "ref" / "config.json").read_text())["train"]["kernel"] == "reference"
    fused = run_training(TrainConfig(epochs=2, dropout=0.0, **QUIET), space, arch, tmp_path / "fused2",
                         data=tiny_data, log=lambda m: None)
    for a, b in zip(_metrics(tmp_path / "ref"), _metrics(tmp_path / "fused2")):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert fused["epochs"] == ref["epochs"] == 2
    model, _ = load_model_file(tmp_path / "fused2" / "best.pt")
    assert model.impl == "reference"


def test_kernel_option_errors():
    with pytest.raises(ConfigError, match="kernel must be one of"):
        TrainConfig(kernel="fast").validate()
    with pytest.raises(ConfigError, match="--compile traces the eager blocks"):
        TrainConfig(kernel="cpp", compile=True).validate()
    TrainConfig(kernel="fused", compile=True).validate()  # auto: the eager blocks are compiled


def test_fused_sgd_takes_a_parameter_whose_first_gradient_comes_late():
    """The search's, train's and prune's SGD (runs.momentum_sgd: fused on CPU, momentum buffers primed): a
    parameter that gets its first gradient after others have stepped (an unselected candidate of a one-path
    search) must not break torch's fused step (it raised without the priming), and the updates are foreach
    SGD's, which handles that case itself, to float32 rounding (the fused kernel contracts differently)."""
    from fbnet_fast.runs import momentum_sgd

    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(300, 7, generator=gen), torch.randn(40, generator=gen)]
    grads = [[torch.randn(300, 7, generator=gen), None]]
    grads += [[torch.randn(300, 7, generator=gen), torch.randn(40, generator=gen)] for _ in range(3)]
    results = []
    for fused in (True, False):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        if fused:
            opt = momentum_sgd(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, device="cpu")
            assert opt.defaults["fused"] and opt.defaults["nesterov"]
        else:
            opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True, foreach=True)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = None if g is None else g.clone()
            opt.step()
        results.append([p.detach().clone() for p in ps])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nesterov", [True, False])
def test_priming_the_momentum_changes_no_bit(nesterov):
    """A zero momentum buffer is torch's first step exactly (``momentum * 0 + grad == grad``): the fused step
    primed and unprimed give the same parameters, bit for bit, when every gradient is there from the start."""
    from fbnet_fast.runs import prime_momentum

    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(300, 7, generator=gen), torch.randn(40, generator=gen)]
    grads = [[torch.randn(300, 7, generator=gen), torch.randn(40, generator=gen)] for _ in range(4)]
    results = []
    for primed in (True, False):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=nesterov, fused=True)
        if primed:
            prime_momentum(opt)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach().clone() for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(*results))
