"""The remote-board back end: the runner on its own, and the whole path against a real
OpenSSH server started on 127.0.0.1 with a throwaway key and a free port.

The "board" is this machine reached over ssh, running the same interpreter
(``--remote-python sys.executable``), so the test covers export, scp, the remote
run, streaming the results back and cleaning up. Where ``sshd`` is missing or
cannot start (no ``openssh-server``, no privilege-separation folder, a sandbox
without sockets) the test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbnet_fast.errors import ConfigError, LUTError
from fbnet_fast.measure import SSHBackend, block_jobs, export_onnx, export_torchscript, measure_jobs, measure_lut
from fbnet_fast.measure.remote_runner import MISSING_RUNTIME_EXIT
from tests.conftest import make_tiny_space, needs_executorch

FAST = dict(repeats=2, warmup=1, min_sample_ms=0.05, passes=1)


def _small_space():
    base = make_tiny_space()
    return make_tiny_space(stages=[base.stages[0], base.stages[1]], candidates=["k3_e1", "k5_e6", "skip"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_sshd() -> str | None:
    for p in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if p and os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """``dict(host, port, user, identity, options)`` of a throwaway sshd; stopped after the module."""
    sshd_bin = _find_sshd()
    if sshd_bin is None:
        pytest.skip("sshd not found: install Debian's openssh-server to run the real SSH test")
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"OpenSSH client tool {tool!r} not found")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    auth = d / "authorized_keys"
    auth.write_text((d / "client_key.pub").read_text())
    os.chmod(auth, 0o600)
    port = _free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if os.path.exists(p)), None)
    config = [
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {auth}", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "LogLevel ERROR",
    ]
    if sftp:  # scp speaks SFTP by default since OpenSSH 9
        config.append(f"Subsystem sftp {sftp}")
    (d / "sshd_config").write_text("\n".join(config) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation folder Debian's sshd requires
    log = open(d / "sshd.log", "w+")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    info = dict(host="127.0.0.1", port=port, user=user, identity=str(d / "client_key"),
                ssh_options=["StrictHostKeyChecking=no", f"UserKnownHostsFile={d / 'known_hosts'}",
                             "LogLevel=ERROR"])
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.skip(f"sshd could not start (exit {proc.returncode}): {log.read().strip()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("sshd did not listen on its port within 10 s")
                time.sleep(0.05)
        probe = SSHBackend(**info, **FAST)
        p = subprocess.run(probe.ssh_command("true"), capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            log.seek(0)
            pytest.skip(f"sshd started but key login failed: {p.stderr.strip()[-300:]} {log.read().strip()[-300:]}")
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---- the runner on its own (no ssh) -------------------------------------------------------

@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_runner_times_exported_blocks(tmp_path, runtime):
    space = _small_space()
    groups = block_jobs(space)[:1]
    export, ext = (export_onnx, ".onnx") if runtime == "onnxruntime" else (export_torchscript, ".pt")
    man_groups = []
    for g in groups:
        mg = []
        for i, job in enumerate(g):
            (tmp_path / f"b{i}{ext}").write_bytes(export(job.build(), job.shape))
            mg.append({"key": job.key, "file": f"b{i}{ext}", "shape": list(job.shape)})
        man_groups.append(mg)
    (tmp_path / "m.json").write_text(json.dumps({"runtime": runtime, "threads": 1, "groups": man_groups, **FAST}))
    runner = Path(__file__).parents[1] / "fbnet_fast" / "measure" / "remote_runner.py"
    # Run from an empty folder with -I: the runner must not need fbnet_fast.
    p = subprocess.run([sys.executable, "-I", str(runner), str(tmp_path / "m.json")], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("DEVICE ")
    dev = json.loads(lines[0].split(" ", 1)[1])
    assert dev["runtime"].startswith(runtime) and dev["threads"] == 1 and dev["clock"] == "cpu"
    results = [json.loads(x.split(" ", 1)[1]) for x in lines[1:]]
    assert [r["key"] for r in results] == [j.key for j in groups[0]]
    for r in results:
        assert r["repeats"] == 2 and 0 <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]


@needs_executorch
def test_runner_times_an_executorch_program(tmp_path):
    from fbnet_fast.measure.executorch_xnnpack import pte_model

    job = next(j for j in block_jobs(_small_space())[0] if j.key.endswith("/skip"))
    (tmp_path / "b0.pte").write_bytes(pte_model(job.build(), job.shape))
    # two programs loaded side by side (a Method does not own its Program: the runner must keep both)
    man = {"runtime": "executorch", "threads": 1, **FAST,
           "groups": [[{"key": k, "file": "b0.pte", "shape": list(job.shape)} for k in (job.key, "again")]]}
    (tmp_path / "m.json").write_text(json.dumps(man))
    runner = Path(__file__).parents[1] / "fbnet_fast" / "measure" / "remote_runner.py"
    p = subprocess.run([sys.executable, "-I", str(runner), str(tmp_path / "m.json")], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    dev = json.loads(next(x for x in lines if x.startswith("DEVICE ")).split(" ", 1)[1])
    assert dev["runtime"].startswith("executorch ") and dev["threads"] == 1
    results = [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("RESULT ")]
    assert [r["key"] for r in results] == [job.key, "again"]
    assert all(r["repeats"] == 2 and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in results)


def _without_executorch(tmp_path: Path) -> Path:
    """A python that cannot import executorch (a board without it): this interpreter with a
    package of that name first on its path that fails to import."""
    shadow = tmp_path / "shadow" / "executorch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('ExecuTorch is not installed on this board')\n")
    py = tmp_path / "python-without-executorch"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={shadow.parent} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    return py


def test_runner_without_executorch_names_the_package_in_one_line(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"runtime": "executorch", "groups": [], **FAST}))
    runner = Path(__file__).parents[1] / "fbnet_fast" / "measure" / "remote_runner.py"
    p = subprocess.run([str(_without_executorch(tmp_path)), str(runner), str(tmp_path / "m.json")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == MISSING_RUNTIME_EXIT and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "needs the python package 'executorch'" in p.stderr
    assert "ExecuTorch is not installed on this board" in p.stderr


def test_runner_rejects_unknown_runtime(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"runtime": "tflite", "groups": [], **FAST}))
    runner = Path(__file__).parents[1] / "fbnet_fast" / "measure" / "remote_runner.py"
    p = subprocess.run([sys.executable, str(runner), str(tmp_path / "m.json")], capture_output=True, text=True)
    assert p.returncode == 2 and "tflite" in p.stderr


def test_ssh_backend_needs_a_host():
    with pytest.raises(ConfigError, match="--host"):
        SSHBackend(host=None)


# ---- the real thing -------------------------------------------------------------------------

def test_ssh_lut_against_loopback_sshd(sshd, tmp_path):
    space = _small_space()
    out = tmp_path / "board.json"
    # two passes: two remote runs, the second reusing the exported blocks
    table = measure_lut(space, backend="ssh", output=out, progress=False, remote_python=sys.executable, **sshd,
                        **{**FAST, "passes": 2})
    table.check_space(space)
    from fbnet_fast.lut import LatencyTable

    again = LatencyTable.load(out, space)  # written in the same validated format as the local back ends
    dev = again.device
    assert dev["backend"] == "ssh" and dev["board"] == f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    assert dev["runtime"].startswith("onnxruntime ") and dev["threads"] == 1 and dev["batch_size"] == 1
    assert dev["device_name"] and dev["format"] == "onnx"
    assert all(e.repeats == 2 for layer in again.layers for e in layer.values()) and dev["passes"] == 2
    assert set(again.fixed) == {"stem", "head"}
    assert not Path(str(out) + ".partial").exists()
    # the remote temporary folders are removed
    backend = SSHBackend(**sshd, **FAST)
    left = subprocess.run(backend.ssh_command("ls -d /tmp/fbnet-lut.* 2>/dev/null | wc -l"), capture_output=True,
                          text=True).stdout.strip()
    assert left == "0"


def test_ssh_torchscript_runtime_and_runner_failure(sshd):
    space = _small_space()
    table = measure_lut(space, backend="ssh", runtime="torch", progress=False, remote_python=sys.executable,
                        **sshd, **FAST)
    assert table.device["runtime"].startswith("torch ") and table.device["format"] == "torchscript"
    with pytest.raises(LUTError, match="runner failed"):
        measure_lut(space, backend="ssh", progress=False, remote_python="/nonexistent/python3", **sshd, **FAST)


def test_ssh_int8_onnx_blocks(sshd):
    space = _small_space()
    table = measure_lut(space, backend="ssh", dtype="int8", progress=False, remote_python=sys.executable, **sshd,
                        **FAST)
    table.check_space(space)
    assert table.device["dtype"] == "int8" and table.device["format"] == "onnx"
    assert SSHBackend.from_device(table.device).dtype == "int8"


@needs_executorch
def test_ssh_executorch_programs_on_a_board_without_executorch(sshd, tmp_path):
    """The host lowers the block to a .pte and ships it; a board whose python lacks ExecuTorch is refused
    in one line naming the package. (The runner timing .pte programs: test_runner_times_an_executorch_program;
    the transport is the one every runtime shares, tested above.)"""
    job = next(j for j in block_jobs(_small_space())[0] if j.key.endswith("/skip"))
    backend = SSHBackend(runtime="executorch", remote_python=str(_without_executorch(tmp_path)), **sshd, **FAST)
    with pytest.raises(ConfigError) as e:
        measure_jobs(backend, [[job]], progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"board {sshd['user']}@127.0.0.1:{sshd['port']}: remote_runner: ")
    assert "needs the python package 'executorch'" in msg and "ExecuTorch is not installed on this board" in msg
    dev = backend.describe()
    assert dev["format"] == "pte" and dev["delegate"] == "xnnpack" and dev["dtype"] == "fp32"
    assert SSHBackend.device_kwargs(dev)["runtime"] == "executorch"


def test_lut_fit_measures_its_networks_on_the_board(sshd, tmp_path, capsys):
    """``lut fit`` of a board's LUT: the N whole networks are exported, shipped and timed on the
    board (its record names the board), and the fitted table keeps the board's record."""
    from fbnet_fast.cli import main
    from fbnet_fast.lut import LatencyTable

    space = _small_space()
    (tmp_path / "space.json").write_text(json.dumps(space.to_dict()))
    lut = tmp_path / "board.json"
    measure_lut(space, backend="ssh", output=lut, progress=False, remote_python=sys.executable, **sshd, **FAST)
    opts = ["--identity", sshd["identity"], "--remote-python", sys.executable]
    opts += [x for o in sshd.get("ssh_options") or [] for x in ("-O", o)]
    out = tmp_path / "board.fit.json"
    rc = main(["lut", "fit", str(lut), "--space", str(tmp_path / "space.json"), "-n", "12", "-o", str(out),
               "--no-progress", "--repeats", "2", "--warmup", "1", "--min-sample-ms", "0.05", "--passes", "1", *opts])
    assert rc == 0, capsys.readouterr().err
    t = LatencyTable.load(out, space)
    on = t.fit["measured_on"]
    assert on["backend"] == "ssh" and on["board"] == f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    assert on["format"] == "onnx" and t.device["board"] == on["board"] and t.fit["networks"] == 10
