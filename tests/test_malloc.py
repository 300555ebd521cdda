"""fbnet_fast.malloc: glibc's thresholds held for the process, unless the user chose otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from fbnet_fast.malloc import tune_malloc; print(tune_malloc(), tune_malloc())"


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "FBNET_FAST_MALLOC")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", CODE], env=env, check=True, capture_output=True,
                          text=True).stdout.split()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tunes_glibc_once_and_respects_the_environment():
    assert _run({}) == ["True", "True"]  # set once, the answer cached
    assert _run({"FBNET_FAST_MALLOC": "0"}) == ["False", "False"]
    assert _run({"MALLOC_MMAP_THRESHOLD_": "131072"}) == ["False", "False"]  # the user's own choice wins
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == ["False", "False"]


def test_cli_calls_it(monkeypatch):
    import fbnet_fast.malloc as m
    from fbnet_fast.cli import main

    calls = []
    monkeypatch.setattr(m, "tune_malloc", lambda: calls.append(1) or True)
    assert main(["space", "fbnet-cifar"]) == 0
    assert calls == [1]


def test_long_lived_frozen_freezes_within_the_block_only():
    """The objects alive at the block's start are frozen (exempt from the collector's scans) inside it and
    unfrozen after it, also when the block raises (a failed search must not leave the process frozen)."""
    import gc

    from fbnet_fast.malloc import long_lived_frozen

    gc.unfreeze()
    with long_lived_frozen():
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError):
        with long_lived_frozen():
            raise RuntimeError("stop")
    assert gc.get_freeze_count() == 0
    with long_lived_frozen():  # nested: the outer block unfreezes
        with long_lived_frozen():
            pass
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0
