"""``torchrun ... tests/_ddp_driver.py DUMP_DIR [dup|dupsame] [kill N] -- fbnet-fast arguments``: the CLI, observed per rank.

Each rank writes ``DUMP_DIR/rank<r>.pt`` at the end of the search: its model state
(theta, weights, BN buffers) and how many checkpoints it wrote itself, so a test can
check the ranks agree and that only rank 0 writes.

``dup``: every global batch is its first half twice (run with ``--no-augment``), the
second copy with every label shifted by one class. With 2 ranks each shard then holds
the same images as the whole batch, so per-rank BN batch statistics equal the global
batch's and a 2-process search must follow a 1-process one up to float rounding; the
shards' labels differ, so it only does if the gradients are averaged over the ranks.
``dupsame``: the same without the label shift (a control: what one rank alone sees).

``kill N``: rank 1 SIGKILLs itself after its N-th training step (torchrun then stops
the other rank).
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    dump = sys.argv[1]
    rest = sys.argv[2:]
    kill_at, dup = None, None
    if rest[0] in ("dup", "dupsame"):
        dup, rest = rest[0], rest[1:]
    if rest[0] == "kill":
        kill_at, rest = int(rest[1]), rest[2:]
    assert rest[0] == "--", rest
    argv = rest[1:]

    import torch

    torch.set_num_threads(1)
    from fbnet_fast import search
    from fbnet_fast.cli import main as cli_main

    rank = int(os.environ.get("RANK", "0"))
    saved = {"n": 0}
    real_save = search.Searcher.save_checkpoint

    def save_checkpoint(self):
        path = real_save(self)
        saved["n"] += path is not None
        return path

    search.Searcher.save_checkpoint = save_checkpoint

    real_finish = search.Searcher.finish

    def finish(self):
        torch.save({"model": self.model.state_dict(), "checkpoints_written": saved["n"]},
                   os.path.join(dump, f"rank{rank}.pt"))
        return real_finish(self)

    search.Searcher.finish = finish

    if dup:
        real_idx = search.Searcher._batch_indices
        real_batch = search._Split.batch

        def batch_indices(self, split):
            idx = real_idx(self, split)
            half = idx[: len(idx) // 2]
            split._dup = dup  # training batches only; evaluation never comes through here
            return torch.cat([half, half])

        def batch(self, idx, gen, device, channels_last, shard=None):
            x, y = real_batch(self, idx, gen, device, channels_last, None)
            if getattr(self, "_dup", None) == "dup":
                y = y.clone()
                y[len(y) // 2:] = (y[len(y) // 2:] + 1) % 10
            return (x[shard], y[shard]) if shard is not None else (x, y)

        search.Searcher._batch_indices = batch_indices
        search._Split.batch = batch

    if kill_at is not None and rank == 1:
        real_step = search.Searcher._train_step
        calls = {"n": 0}

        def step(self):
            out = real_step(self)
            calls["n"] += 1
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        search.Searcher._train_step = step
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
