"""``fbnet-fast sample | train | export``: from a finished search to a deployable model.

    fbnet-fast sample RUN_DIR [--num K --seed S]     argmax + K samples of P_theta, with cost
    fbnet-fast train ARCH.json [--data ... --inherit RUN_DIR]   train one from scratch
    fbnet-fast export MODEL_DIR_OR_CKPT --format onnx,torchscript,pte,pte-int8,onnx-int8 --out DIR
    fbnet-fast export MODEL_DIR_OR_CKPT --verify FILE      is FILE an export of this model?

An architecture file is the search's ``arch.json`` format
(``{"space", "fingerprint", "blocks", "space_def"}``, ``space_def`` being the resolved space,
widths included), so ``train`` needs nothing else; ``sample`` adds ``stats``. A hand-written
file may be just the JSON ``blocks`` list with ``space`` (then ``--space`` /
``--width-mult`` say which widths), or plain text: block names separated by spaces or
newlines, ``#`` starting a comment.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["COMMANDS", "draw_architectures", "sample_run"]


# ---- sample ---------------------------------------------------------------------------------

def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a search run folder (config.json, lut.json, "
                   "theta.json or checkpoints/); not needed with --preset")
    p.add_argument("--preset", default=None, help="instead of a search: write a published architecture "
                   "(fbnet_a, fbnet_b, fbnet_c, fbnet_s8, fbnet_iphonex) as an architecture file")
    p.add_argument("--input-size", type=int, default=None, help="with --preset: input resolution (default 224)")
    p.add_argument("--num-classes", type=int, default=None, help="with --preset: classes (default 1000)")
    p.add_argument("--num", "-k", type=int, default=6, help="architectures to sample from P_theta "
                   "(default: %(default)s, as many as the paper trains)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--out", "-o", default=None, help="folder for the architecture files (default: RUN_DIR/samples)")


def _run_theta(run_dir: Path, space) -> tuple["torch.Tensor", str]:
    import torch

    from ..errors import CheckpointError

    theta_path = run_dir / "theta.json"
    if theta_path.is_file():
        try:
            d = json.loads(theta_path.read_text())
            theta = torch.tensor(d["theta"], dtype=torch.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{theta_path}: expected {{'theta': [[...] per layer]}} ({type(e).__name__}: {e})") from None
        if d.get("candidates", space.candidates) != space.candidates:
            raise CheckpointError(f"{theta_path}: candidates {d.get('candidates')} differ from the run's space")
        source = str(theta_path)
    else:
        from ..model import load_run_supernet

        _, state, ckpt = load_run_supernet(run_dir)
        theta = torch.stack([state[f"layers.{l}.theta"].double() for l in range(space.num_layers)])
        source = f"{ckpt} (search not finished: no theta.json)"
    if tuple(theta.shape) != (space.num_layers, len(space.candidates)):
        raise CheckpointError(f"{source}: theta must be [{space.num_layers}, {len(space.candidates)}], "
                              f"got {list(theta.shape)}")
    return theta, source


def draw_architectures(run_dir: str | Path, *, num: int, seed: int):
    """The argmax architecture and ``num`` samples of ``P_theta`` (seeded) of a search run.

    Returns ``(space, lut, theta [L, K] float64, theta source, [(name, Architecture)])``,
    names ``"argmax"``, ``"sample-01"`` ...
    """
    import torch

    from ..errors import CheckpointError, ConfigError
    from ..multitarget import load_latency_model
    from ..runs import read_run_config
    from ..supernet import Supernet

    if num < 0:
        raise ConfigError(f"--num must be >= 0, got {num}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    run_dir = Path(run_dir)
    _, space = read_run_config(run_dir, error=CheckpointError)
    lut = load_latency_model(run_dir / "lut.json", space)  # one LUT or a multi-target search's
    theta, source = _run_theta(run_dir, space)

    # The supernet's own sampler, built on the meta device: no weights are allocated.
    with torch.device("meta"):
        net = Supernet(space, impl="reference")
    for op, row in zip(net.layers, theta):
        op.theta = torch.nn.Parameter(row.float(), requires_grad=False)
    archs = [("argmax", net.most_likely())]
    if num:
        gen = torch.Generator().manual_seed(seed)
        archs += [(f"sample-{j + 1:02d}", a) for j, a in enumerate(net.sample_architectures(num, generator=gen))]
    return space, lut, theta, source, archs


def sample_run(run_dir: str | Path, *, num: int, seed: int) -> dict[str, Any]:
    """:func:`draw_architectures` plus each one's log-probability, LUT latency, params and FLOPs.

    Returns ``{"space", "theta_source", "rows": [{name, arch, blocks, log_prob, latency_ms, params,
    flops, macs, same_as}]}``.
    """
    import torch

    from ..model import model_stats

    space, lut, theta, source, archs = draw_architectures(run_dir, num=num, seed=seed)
    log_p = torch.log_softmax(theta, dim=-1)
    rows, seen = [], {}
    for name, arch in archs:
        idx = arch.indices(space)
        stats = model_stats(space, arch)
        rows.append({
            "name": name, "arch": arch, "blocks": list(arch.blocks),
            "log_prob": float(sum(log_p[l, i] for l, i in enumerate(idx))),
            "latency_ms": lut.architecture_latency(arch.blocks), **stats.to_dict(),
            "same_as": seen.get(arch.blocks),
        })
        seen.setdefault(arch.blocks, name)
    return {"space": space, "theta_source": source, "rows": rows}


def _run_sample(args: argparse.Namespace) -> int:
    from ..runs import atomic_write_text

    if args.preset or not args.run_dir:
        from ..presets import run_preset_sample

        return run_preset_sample(args)

    res = sample_run(args.run_dir, num=args.num, seed=args.seed)
    space = res["space"]
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    print(f"space {space.name} ({space.fingerprint}), theta from {res['theta_source']}")
    print(f"{'name':<10} {'log P':>8} {'LUT ms':>9} {'params':>9} {'MFLOPs':>8}  blocks")
    summary = []
    for r in res["rows"]:
        doc = {**r["arch"].to_dict(space),
               "stats": {k: r[k] for k in ("log_prob", "latency_ms", "params", "flops", "macs")},
               "source": {"run_dir": str(args.run_dir), "sample": r["name"], "seed": args.seed}}
        atomic_write_text(out / f"{r['name']}.json", json.dumps(doc, indent=1) + "\n")
        note = f"  (same as {r['same_as']})" if r["same_as"] else ""
        print(f"{r['name']:<10} {r['log_prob']:>8.2f} {r['latency_ms']:>9.4f} {r['params']:>9,d} "
              f"{r['flops'] / 1e6:>8.2f}  {' '.join(r['blocks'])}{note}")
        summary.append({k: v for k, v in r.items() if k != "arch"} | {"file": f"{r['name']}.json"})
    atomic_write_text(out / "samples.json", json.dumps({"space": space.name, "fingerprint": space.fingerprint,
                                                        "seed": args.seed, "theta_source": res["theta_source"],
                                                        "architectures": summary}, indent=1) + "\n")
    print(f"FLOPs counted by torch FlopCounterMode (2 per multiply-add) for one "
          f"{space.in_channels}x{space.input_size}x{space.input_size} image; LUT latency includes stem+head")
    print(f"wrote {len(summary)} architecture files to {out}")
    return 0


# ---- train ----------------------------------------------------------------------------------

def _add_train(p: argparse.ArgumentParser) -> None:
    from ..ops import KERNEL_CHOICES
    from ..precision import PRECISIONS
    from ..train import TrainConfig

    d = TrainConfig()
    p.add_argument("arch", metavar="ARCH", nargs="?", help="architecture file (from 'fbnet-fast sample', a "
                   "search's arch.json, or hand-written); not needed with --resume")
    g = p.add_argument_group("architecture and data")
    g.add_argument("--space", default=None, help="space name or file (default: the file's space_def, else its "
                   "'space' name)")
    g.add_argument("--width-mult", type=float, default=None, help="width multiplier of --space")
    g.add_argument("--inherit", metavar="RUN_DIR", default=None, help="start from the search's supernet weights "
                   "of the chosen candidates (default: from scratch)")
    g.add_argument("--data", default=d.data, help="'synthetic' (default), 'cifar10:PATH' (python batches) or "
                   "'folder:PATH' (class-per-subfolder images, resized to the space's input size; only read)")
    g.add_argument("--num-train", type=int, default=None, help="training images (default: all; synthetic: 6000)")
    g.add_argument("--num-val", type=int, default=None, help="held-out images (default: all; synthetic: 2000)")
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate, cosine to 0 (default: %(default)s)")
    g.add_argument("--lr-ramp-steps", type=int, default=d.lr_ramp_steps,
                   help="steps of linear LR ramp from 0 at the start (default: %(default)s; 0: none)")
    g.add_argument("--no-zero-init-residual", dest="zero_init_residual", action="store_false",
                   help="initialise residual blocks' last BN scale to 1 (default: 0, so each starts as the identity)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="Nesterov momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="weight decay of conv and linear weights (default: %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default: %(default)s)")
    g.add_argument("--dropout", type=float, default=d.dropout, help="before the classifier (default: %(default)s)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    g = p.add_argument_group("execution and output")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    g.add_argument("--device", default=d.device, help="torch device (default: %(default)s)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (its compile time, timed before "
                   "the first epoch, is reported apart as compile_s; worth it for long trainings)")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: autocast bf16 steps and evaluation, fp32 master weights and loss; only on CPUs with "
                   "AVX512-BF16 and CUDA GPUs with bf16, refused elsewhere (default: %(default)s)")
    g.add_argument("--kernel", choices=KERNEL_CHOICES, default=d.kernel,
                   help="how the blocks run in the training steps: the search's fused kernels where built (auto/"
                   "fused; eager under --compile or bf16) or the eager reference (default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="checkpoints kept (default: %(default)s)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("--out", "-o", default="runs/train", help="output folder (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the training in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out")


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from ..errors import ConfigError
    from ..train import TrainConfig, run_training

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.resume:
        space = arch = None
    else:
        if not args.arch:
            raise ConfigError("an architecture file is needed (or --resume to continue the run in --out)")
        from ..runs import load_architecture_file

        space, arch = load_architecture_file(args.arch, space_name=args.space, width_mult=args.width_mult,
                                             run_dir=args.inherit)
    s = run_training(cfg, space, arch, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"architecture: {s['arch']}")
    print(f"held-out top-1: best {s['best_val_acc']:.4f} (epoch {s['best_epoch']}), last {s['last_val_acc']:.4f}; "
          f"{s['params']:,d} parameters, {s['flops'] / 1e6:.2f} MFLOPs")
    print(f"best model: {s['best_model']}")
    return 0


# ---- export ---------------------------------------------------------------------------------

def _add_export(p: argparse.ArgumentParser) -> None:
    from ..export import CALIB_IMAGES, EXPORT_FORMATS, MAX_INT8_DROP, ONNX_OPSET, PTE_BATCH

    p.add_argument("model", metavar="MODEL_DIR_OR_CKPT", help="a 'fbnet-fast train' output folder (its best.pt), "
                   "a model file or a training checkpoint")
    p.add_argument("--format", default="onnx,torchscript", help=f"comma-separated: {', '.join(EXPORT_FORMATS)} "
                   "(pte: ExecuTorch with the XNNPACK delegate; -int8: quantized, calibrated on training images; "
                   "default: %(default)s)")
    p.add_argument("--out", "-o", default=None, help="output folder (default: MODEL_DIR/export)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (default: %(default)s)")
    p.add_argument("--name", default="model", help="file name stem (default: %(default)s)")
    p.add_argument("--bench-runs", type=int, default=50, help="timed batch-1 runs per format on 1 thread "
                   "(default: %(default)s; 0: skip)")
    g = p.add_argument_group("ExecuTorch, int8 and the held-out check")
    g.add_argument("--pte-batch", type=int, default=PTE_BATCH, help=".pte programs have a fixed input shape: the "
                   "batch size they take (default: %(default)s)")
    g.add_argument("--calib-images", type=int, default=CALIB_IMAGES, help="training images int8 formats are "
                   "calibrated on (default: %(default)s)")
    g.add_argument("--max-int8-drop", type=float, default=MAX_INT8_DROP, help="largest held-out top-1 loss of an "
                   "int8 export against the fp32 model, as a fraction (default: %(default)s = "
                   f"{MAX_INT8_DROP * 100:g} points)")
    g.add_argument("--eval-images", type=int, default=None, help="held-out images every export is checked on "
                   "(default: the whole validation split)")
    g.add_argument("--data", default=None, help="the data set to calibrate and check on (default: the run's, "
                   "from its config.json; 'synthetic', 'cifar10:PATH' or 'folder:PATH')")
    g.add_argument("--verify", metavar="FILE", action="append", default=None, help="instead of exporting: check "
                   "that FILE (.pte, .onnx, .pt) is an export of this model, on the held-out images (repeatable)")


def _run_config(src_file: Path) -> Path | None:
    """The ``config.json`` of the training run a model file belongs to, if any."""
    for d in (src_file.parent, src_file.parent.parent):
        if (d / "config.json").is_file():
            return d / "config.json"
    return None


def _run_images(args: argparse.Namespace, src: Path, src_file: Path, model, payload: dict, need: str | None):
    """(calibration, held-out) images of the run's data set, or (None, None) when unknown and not ``need``-ed."""
    from ..errors import CheckpointError, ConfigError, DataError
    from ..export import run_images

    space = model.space
    cfg: dict[str, Any] = {}
    config = _run_config(src_file)
    if config is not None:
        try:
            cfg = json.loads(config.read_text())["train"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{config}: not a training run's config ({type(e).__name__}: {e})") from None
    if args.data:
        spec, num_train, num_val = args.data, None, None
    elif cfg.get("data"):
        spec, num_train, num_val = cfg["data"], cfg.get("num_train"), cfg.get("num_val")
    elif need:
        raise ConfigError(f"{need} needs the run's data set (training images to calibrate on, held-out images to "
                          f"check on), but {src} has no training config.json; pass --data SPEC")
    else:
        return None, None
    try:
        return run_images(spec, image_size=space.input_size, num_classes=space.num_classes,
                          seed=int(cfg.get("seed", 0)), num_train=num_train, num_val=num_val, mean=payload.get("mean"),
                          std=payload.get("std"), calib_images=args.calib_images, eval_images=args.eval_images)
    except DataError as e:
        hint = "" if args.data else "; pass --data SPEC where the run's data set is now"
        raise DataError(f"cannot read the data set the exports are checked on: {e}{hint}") from None


def _verify_files(args: argparse.Namespace, model, held) -> int:
    from ..export import verify_file

    for f in args.verify:
        e = verify_file(model, f, held, run=args.model, max_int8_drop=args.max_int8_drop)
        shape = "" if e["input_shape"] is None else f" input {list(e['input_shape'])},"
        if e["dtype"] == "int8":
            print(f"{f}: an int8 export of {args.model}'s model ({e['format']},{shape} {e['images']} held-out "
                  f"images): top-1 {e['accuracy']:.4f} vs fp32 {e['eager_fp32_accuracy']:.4f}, top-1 agreement "
                  f"{e['argmax_agreement']:.3f}, logits off by {e['logit_rel_rms_err']:.3f} relative RMS")
        else:
            print(f"{f}: an fp32 export of {args.model}'s model ({e['format']},{shape} {e['images']} held-out "
                  f"images): max |diff| vs float64 eager {e['max_abs_err']:.2e} (tolerance {e['tolerance']:.2e}), "
                  f"vs float32 eager {e['max_abs_diff_vs_eager_fp32']:.2e}, top-1 {e['accuracy']:.4f}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError
    from ..export import INT8_FORMATS, export_model, parse_formats
    from ..model import load_model_file, model_stats

    formats = parse_formats(args.format)
    src = Path(args.model)
    if src.is_dir():
        if not (src / "best.pt").is_file():
            raise CheckpointError(f"{src} holds no best.pt; pass a 'fbnet-fast train' output folder or a model file")
        src_file, default_out = src / "best.pt", src / "export"
    else:
        src_file, default_out = src, src.parent / "export"
    model, payload = load_model_file(src_file)
    int8 = [f for f in formats if f in INT8_FORMATS]
    need = "--verify" if args.verify else (f"--format {','.join(int8)}" if int8 else None)
    calib, held = _run_images(args, src, src_file, model, payload, need)
    if args.verify:
        return _verify_files(args, model, held)
    space = model.space
    stats = model_stats(space, model=model)
    meta = {"source": str(src_file), "arch": model.arch.to_dict(), "space": space.to_dict(),
            "stats": stats.to_dict(), "val_acc": payload.get("val_acc"),
            "preprocess": {"scale": 1 / 255, "mean": payload.get("mean"), "std": payload.get("std"),
                           "layout": "NCHW, RGB"},
            "class_names": payload.get("class_names")}
    out = Path(args.out) if args.out else default_out
    rep = export_model(model, out, formats=formats, opset=args.opset, name=args.name,
                       input_shape=(space.in_channels, space.input_size, space.input_size),
                       bench_runs=args.bench_runs, metadata=meta, calib=calib, held_out=held,
                       pte_batch=args.pte_batch, max_int8_drop=args.max_int8_drop)
    ver = rep["verification"]
    if held is not None:
        print(f"checked on {held.source}")
    else:
        print("checked on a random batch only: the run's data set is unknown (no config.json; pass --data)")
    for fmt in formats:
        c, file = ver[fmt], out / rep["files"][fmt]
        h = c.get("held_out")
        extra = f" opset {rep['onnx_opset']}" if fmt in ("onnx", "onnx-int8") else ""
        extra += f" (fixed input {rep['pte']['input_shape']})" if fmt.startswith("pte") else ""
        if fmt in INT8_FORMATS:
            print(f"{fmt}{extra}: {file}  held-out top-1 int8 {h['accuracy']:.4f} vs fp32 {h['eager_fp32_accuracy']:.4f} "
                  f"(drop {h['accuracy_drop'] * 100:+.2f} points, limit {args.max_int8_drop * 100:g}), top-1 "
                  f"agreement {h['argmax_agreement']:.3f}, logits off by {h['logit_rel_rms_err']:.3f} relative RMS")
            continue
        line = (f"{fmt}{extra}: {file}  max |diff| vs float64 eager {c['max_abs_err']:.2e} "
                f"(tolerance {c['tolerance']:.2e}, float32 eager {c['eager_fp32_err']:.2e})")
        if h:
            line += (f"; held-out: {h['max_abs_err']:.2e} (tolerance {h['tolerance']:.2e}), vs float32 eager "
                     f"{h['max_abs_diff_vs_eager_fp32']:.2e}, top-1 {h['accuracy']:.4f}, agreement "
                     f"{h['argmax_agreement']:.3f}")
        else:
            line += f", top-1 agreement {c['argmax_agreement']:.3f}"
        print(line)
    lat = rep.get("latency_ms_batch1_1thread")
    if lat:
        print("batch-1 latency on this CPU, 1 thread (median): " +
              ", ".join(f"{k} {v:.3f} ms" for k, v in lat.items()))
    acc = payload.get("val_acc")
    acc_s = f"held-out top-1 {acc:.4f}, " if isinstance(acc, float) and math.isfinite(acc) else ""
    print(f"{acc_s}{stats.params:,d} parameters, {stats.flops / 1e6:.2f} MFLOPs; BN folded; report {out / 'export.json'}")
    return 0


COMMANDS = {
    "sample": ("print and save the argmax architecture and samples of P_theta from a search run",
               _add_sample, _run_sample),
    "train": ("train an architecture from scratch (or from inherited supernet weights)", _add_train, _run_train),
    "export": ("export a trained model (ONNX, TorchScript, ExecuTorch; fp32 or int8) with BN folded, checked "
               "in its runtime against PyTorch",
               _add_export, _run_export),
}
