"""Smoke tests through the installed console script (``fbnet-fast``) or ``python -m``."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import make_tiny_space


def cli(*args, check=True, cwd=None):
    exe = shutil.which("fbnet-fast")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "fbnet_fast", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.mark.parametrize("sub", [[], ["search"], ["lut"], ["lut", "measure"], ["space"]])
def test_every_command_has_help(sub):
    r = cli(*sub, "--help")
    assert "usage: fbnet-fast" in r.stdout
    if sub == ["search"]:
        # every option carries help text
        for opt in ("--alpha", "--beta", "--gumbel", "--kernel", "--warmup-epochs", "--resume", "--overwrite"):
            assert opt in r.stdout


def test_space_command():
    r = cli("space", "fbnet")
    assert "fingerprint 3857077435a8c18d" in r.stdout and "L21" in r.stdout


def test_search_end_to_end_with_a_user_space_file(tmp_path):
    space = make_tiny_space(input_size=32).to_dict()
    (tmp_path / "space.json").write_text(json.dumps(space))
    out = tmp_path / "run"
    r = cli("search", "--space", str(tmp_path / "space.json"), "--width-mult", "1", "--num-train", "200",
            "--num-val", "40", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "16",
            "--lut-repeats", "2", "--no-progress", "--threads", "1", "--out", str(out))
    # the default budget: stated at the start, the result under it at the end
    assert "budget: ceiling" in r.stdout and "(0.75 x the uniform-theta latency" in r.stdout
    assert "argmax of theta:" in r.stdout and "architecture:" in r.stdout and "(ceiling " in r.stdout
    assert (out / "arch.json").is_file() and (out / "lut.json").is_file()
    # the same folder again: refused with one clear line, nothing overwritten
    before = (out / "arch.json").read_bytes()
    r = cli("search", "--space", str(tmp_path / "space.json"), "--out", str(out), check=False)
    assert r.returncode == 2 and r.stderr.startswith("fbnet-fast: error:") and "--resume" in r.stderr
    assert "Traceback" not in r.stderr and (out / "arch.json").read_bytes() == before
    # the LUT it wrote can be shown
    r = cli("lut", "show", str(out / "lut.json"))
    assert "fastest architecture" in r.stdout


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "lut.json"
    bad.write_text("{")
    r = cli("search", "--lut", str(bad), "--out", str(tmp_path / "r"), check=False)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    r = cli("search", "--alpha", "-1", "--out", str(tmp_path / "r2"), check=False)
    assert r.returncode == 2 and "alpha" in r.stderr and "Traceback" not in r.stderr
