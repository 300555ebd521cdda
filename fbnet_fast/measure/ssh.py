"""A remote board over SSH: export blocks, copy them with the runner, time them there.

The host exports every job (ONNX for the board's onnxruntime, TorchScript for its
torch, or an ExecuTorch ``.pte`` program with the XNNPACK delegate for its ExecuTorch
python runtime; int8 for onnxruntime and executorch, quantized on the host as the local
back ends do it), writes a manifest, copies the folder together with the self-contained
:mod:`fbnet_fast.measure.remote_runner` to a fresh temporary folder on the board with
``scp``, runs it with the board's own python over ``ssh`` and reads the timings
back line by line as the board finishes each layer shape (so the progress bar
moves and the partial LUT is saved while the board works). The remote folder is
removed afterwards. Only OpenSSH's ``ssh``/``scp`` clients are needed on the
host, with key authentication (``BatchMode=yes``: never a password prompt); the
``executorch`` runtime also needs ExecuTorch on the host, which lowers the programs.
A board without the runtime's python package is refused with one line naming it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import ConfigError, LUTError
from ..lut import LatencyEntry
from .core import Backend, Job, ModelCache
from .onnxrt import export_torchscript, onnx_model
from .remote_runner import MISSING_RUNTIME_EXIT

REMOTE_RUNTIMES = ("onnxruntime", "torch", "executorch")
FORMATS = {"onnxruntime": "onnx", "torch": "torchscript", "executorch": "pte"}

__all__ = ["SSHBackend"]


class SSHBackend(Backend):
    """Time blocks on ``[user@]host`` with ``runtime`` (``"onnxruntime"``, ``"torch"`` or ``"executorch"``);
    ``dtype="int8"`` with onnxruntime or executorch.

    Args:
        host: the board's address; ``user`` and ``port`` as for ``ssh``.
        identity: private key file (``ssh -i``).
        ssh_options: extra ``-o`` options, e.g. ``["StrictHostKeyChecking=accept-new"]``.
        remote_python: the board's interpreter (default ``python3``).
        keep_remote: leave the remote folder (for debugging the runner on the board).
    """

    name = "ssh"
    DTYPES = ("fp32", "int8")

    def __init__(self, *, host: str | None = None, port: int = 22, user: str | None = None,
                 identity: str | None = None, ssh_options: Sequence[str] = (), remote_python: str = "python3",
                 runtime: str = "onnxruntime", keep_remote: bool = False, connect_timeout: int = 15,
                 ssh: str = "ssh", scp: str = "scp", **kw: Any) -> None:
        super().__init__(**kw)
        if not host:
            raise ConfigError("back end 'ssh' needs the board's address (--host)")
        if runtime not in REMOTE_RUNTIMES:
            raise ConfigError(f"remote runtime must be one of {', '.join(REMOTE_RUNTIMES)}, got {runtime!r}")
        if self.dtype != "fp32" and runtime == "torch":
            raise ConfigError(f"remote runtime 'torch' has no {self.dtype} path; use --remote-runtime onnxruntime or "
                              f"executorch")
        if runtime == "executorch":
            from ..runtimes import require_executorch

            require_executorch("back end 'ssh' with the executorch runtime (this host lowers the programs)")
        for tool in (ssh, scp):
            if shutil.which(tool) is None:
                raise ConfigError(f"back end 'ssh' needs the OpenSSH client {tool!r} on this host's PATH")
        self.host, self.port, self.user, self.identity = host, int(port), user, identity
        self.ssh_options, self.remote_python, self.runtime = list(ssh_options), remote_python, runtime
        self.keep_remote, self.connect_timeout = keep_remote, connect_timeout
        self._ssh, self._scp = ssh, scp
        self._board: dict[str, Any] | None = None
        # model bytes, reused by later passes
        self._exported = ModelCache(f"{runtime} {self.dtype} seed {self.seed} torch {torch.__version__}")

    _CLI = {"host": "host", "port": "port", "user": "user", "identity": "identity", "ssh_option": "ssh_options",
            "remote_python": "remote_python", "remote_runtime": "runtime"}

    @classmethod
    def device_kwargs(cls, device: Mapping[str, Any]) -> dict[str, Any]:
        kw = super().device_kwargs(device)
        user, _, hostport = str(device.get("board", "")).rpartition("@")
        host, _, port = hostport.partition(":")
        kw.update(host=host or None, user=user or None)
        if port:
            kw["port"] = int(port)
        runtime = {f: r for r, f in FORMATS.items()}.get(device.get("format"))
        if runtime is not None:
            kw["runtime"] = runtime
        return kw

    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        g = parser.add_argument_group("remote board (--backend ssh)")
        g.add_argument("--host", default=None, help="the board's address (default: a LUT's own board)")
        g.add_argument("--port", type=int, default=None, help="ssh port (default: 22)")
        g.add_argument("--user", default=None, help="ssh user (default: ssh's)")
        g.add_argument("--identity", "-i", default=None, help="private key file")
        g.add_argument("--ssh-option", "-O", action="append", default=None, metavar="KEY=VALUE",
                       help="extra ssh -o option (repeatable), e.g. StrictHostKeyChecking=accept-new")
        g.add_argument("--remote-python", default=None, help="the board's python (default: python3)")
        g.add_argument("--remote-runtime", choices=REMOTE_RUNTIMES, default=None,
                       help="runtime on the board: ONNX models for onnxruntime, TorchScript for torch, or .pte "
                       "programs (XNNPACK delegate) for ExecuTorch's python runtime (default: onnxruntime)")

    @classmethod
    def cli_kwargs(cls, args: Any) -> dict[str, Any]:
        return {kw: getattr(args, opt) for opt, kw in cls._CLI.items() if getattr(args, opt, None) is not None}


    # ---- plumbing ------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _common(self) -> list[str]:
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.identity:
            args += ["-i", str(self.identity)]
        for o in self.ssh_options:
            args += ["-o", o]
        return args

    def ssh_command(self, remote: str) -> list[str]:
        return [self._ssh, "-p", str(self.port), *self._common(), self.target, remote]

    def _run(self, remote: str, what: str) -> str:
        p = subprocess.run(self.ssh_command(remote), capture_output=True, text=True)
        if p.returncode != 0:
            raise LUTError(f"board {self.target}:{self.port}: {what} failed (ssh exit {p.returncode}): "
                           f"{p.stderr.strip()[-800:]}")
        return p.stdout

    def _copy(self, local: Path, remote_dir: str) -> None:
        cmd = [self._scp, "-q", "-r", "-P", str(self.port), *self._common(), str(local),
               f"{self.target}:{remote_dir}/"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise LUTError(f"board {self.target}:{self.port}: copying the blocks with scp failed "
                           f"(exit {p.returncode}): {p.stderr.strip()[-800:]}")

    # ---- Backend -------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "board": f"{self.target}:{self.port}", "runtime": self.runtime}

    def describe(self) -> dict[str, Any]:
        board = dict(self._board or {})
        return {"backend": self.name, "device_name": board.pop("device_name", "unknown"),
                "threads": self.threads, "runtime": board.pop("runtime", self.runtime),
                "clock": board.pop("clock", self.clock), "repeats": self.repeats, "warmup": self.warmup,
                "min_sample_ms": self.min_sample_ms, "passes": self.passes,
                "dtype": self.dtype, "board": f"{self.target}:{self.port}", "format": FORMATS[self.runtime],
                **({"delegate": "xnnpack"} if self.runtime == "executorch" else {}),
                **{f"board_{k}": v for k, v in board.items() if k != "threads"}}

    def _make(self, module: Any, shape: tuple[int, ...]) -> bytes:
        """``module`` in the board runtime's format and this back end's dtype."""
        if self.runtime == "onnxruntime":
            return onnx_model(module, shape, dtype=self.dtype, seed=self.seed)
        if self.runtime == "executorch":
            from .executorch_xnnpack import pte_model

            return pte_model(module, shape, dtype=self.dtype, seed=self.seed)
        return export_torchscript(module, shape)

    def _export(self, groups: Sequence[Sequence[Job]], folder: Path) -> dict[str, Job]:
        from . import remote_runner

        (folder / "blocks").mkdir(parents=True)
        shutil.copy(remote_runner.__file__, folder / "remote_runner.py")
        ext = {"onnxruntime": ".onnx", "torch": ".pt", "executorch": ".pte"}[self.runtime]
        by_key, man_groups, i = {}, [], 0
        for group in groups:
            mg = []
            for job in group:
                rel = f"blocks/{i}{ext}"
                (folder / rel).write_bytes(self._exported.get(job, self._make))
                mg.append({"key": job.key, "file": rel, "shape": list(job.shape)})
                by_key[job.key] = job
                i += 1
            man_groups.append(mg)
        manifest = {"runtime": self.runtime, "threads": self.threads, "repeats": self.repeats,
                    "warmup": self.warmup, "min_sample_ms": self.min_sample_ms, "clock": self.clock, "seed": self.seed,
                    "prime": self.prime, "shuffle_seed": self.seed if self.shuffle else None, "groups": man_groups}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return by_key

    def measure(self, groups: Sequence[Sequence[Job]], on_result: Callable[[Job, LatencyEntry], None]) -> None:
        with tempfile.TemporaryDirectory(prefix="fbnet-lut-") as tmp:
            local = Path(tmp) / "job"
            by_key = self._export(groups, local)
            remote_dir = self._run("mktemp -d /tmp/fbnet-lut.XXXXXX", "creating a folder").strip()
            if not remote_dir.startswith("/tmp/fbnet-lut."):
                raise LUTError(f"board {self.target}:{self.port}: unexpected reply to mktemp: {remote_dir!r}")
            try:
                self._copy(local, remote_dir)
                job_dir = shlex.quote(f"{remote_dir}/job")
                cmd = f"cd {job_dir} && {self.remote_python} remote_runner.py manifest.json"
                with tempfile.TemporaryFile(mode="w+") as err:
                    proc = subprocess.Popen(self.ssh_command(cmd), stdout=subprocess.PIPE, stderr=err, text=True)
                    try:
                        assert proc.stdout is not None
                        for line in proc.stdout:
                            tag, _, payload = line.partition(" ")
                            if tag == "DEVICE":
                                self._board = json.loads(payload)
                            elif tag == "RESULT":
                                d = json.loads(payload)
                                job = by_key.get(d.pop("key"))
                                if job is not None:
                                    on_result(job, LatencyEntry.from_dict(d, f"board {self.target}: {job.key}"))
                        rc = proc.wait()
                    except BaseException:
                        proc.kill()
                        proc.wait()
                        raise
                    if rc == MISSING_RUNTIME_EXIT:
                        err.seek(0)
                        said = [x for x in err.read().splitlines() if x.startswith("remote_runner:")]
                        raise ConfigError(f"board {self.target}:{self.port}: "
                                          + (said[-1] if said else f"the board lacks the {self.runtime} runtime"))
                    if rc != 0:
                        err.seek(0)
                        raise LUTError(f"board {self.target}:{self.port}: the runner failed "
                                       f"({self.remote_python} remote_runner.py, exit {rc}): {err.read().strip()[-1200:]}")
            finally:
                if not self.keep_remote:
                    try:
                        self._run(f"rm -rf {shlex.quote(remote_dir)}", "removing the remote folder")
                    except LUTError:
                        pass
