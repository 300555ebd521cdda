"""``python -m fbnet_fast.data --calibrate``: measure the generated data set's difficulty
(the figures in :mod:`fbnet_fast.data`'s docstring)."""

from __future__ import annotations

import torch

from . import build_datasets, make_loader, make_synthetic


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

    parser = argparse.ArgumentParser(description="the generated data set's difficulty calibration")
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
