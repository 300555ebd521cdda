"""Run ``fbnet-fast`` with a fault injected at a chosen point (used by the crash tests).

    python tests/_kill_driver.py MODE N -- fbnet-fast arguments...

MODE:
  none   run the CLI unchanged
  step   SIGKILL right after the N-th call (1-based) of ``Searcher._train_step`` has
         updated the model, before the step counter moves: in-memory state is ahead
         of every checkpoint on disk
  save   at the N-th ``torch.save``, write half of the checkpoint's bytes into the
         temp file, fsync it, then SIGKILL: a torn write
  nan    make the N-th training step's loss NaN (the search must stop with a message)

The fault lives here, not in the library: only this process is patched.
"""

from __future__ import annotations

import io
import os
import signal
import sys


def main() -> int:
    mode, n = sys.argv[1], int(sys.argv[2])
    assert sys.argv[3] == "--", sys.argv
    argv = sys.argv[4:]

    import torch

    torch.set_num_threads(1)
    from fbnet_fast import search
    from fbnet_fast.cli import main as cli_main

    calls = {"n": 0}

    if mode == "step":
        real_step = search.Searcher._train_step

        def step(self):
            out = real_step(self)
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        search.Searcher._train_step = step
    elif mode == "save":
        real_save = torch.save

        def save(obj, f, *a, **kw):
            calls["n"] += 1
            if calls["n"] != n:
                return real_save(obj, f, *a, **kw)
            buf = io.BytesIO()
            real_save(obj, buf, *a, **kw)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save
    elif mode == "nan":
        real_step = search.Searcher._train_step

        def step(self):
            calls["n"] += 1
            if calls["n"] == n:
                crit = self.criterion

                def nan_loss(logits, y, latency):
                    return crit(logits * float("nan"), y, latency)

                self.criterion = nan_loss
                try:
                    return real_step(self)
                finally:
                    self.criterion = crit
            return real_step(self)

        search.Searcher._train_step = step
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode!r}")
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
