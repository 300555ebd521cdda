#!/usr/bin/env bash
# One-command GPU check of the Triton path: at most ~8 minutes on one CUDA GPU, no network.
#
#   bash bench/gpu_check.sh [OUT_DIR]        (default bench/results/gpu_check/)
#
# Without a CUDA device: checks its own syntax and bench/gpu/gpu_check.py's, says nothing was
# measured, exits 0. With one, each step under its own timeout (caps sum to 425 s; every step is
# also clipped to what is left of 440 s from the start, and the summary has 25 s: < 8 min in all):
#   install  pip install --no-deps --no-build-isolation --no-index -e .  (builds fbnet_fast._C;
#            torch and triton untouched), then `import triton` (it ships with CUDA torch)   60 s
#   tests    TRITON_INTERPRET unset, compiled Triton only:
#            tests/test_triton_kernels.py minus test_interpreter_numerics (the CPU suite's
#            interpreter run), in two parts: the on-GPU tests, then the AOT cubin compiles   55 + 70 s
#            tests/test_mixed_op.py -k "cuda or gpu or triton" (no such case today: every
#            test there runs the C++ kernels on CPU; "none" is not a failure)              15 s
#   kernels  bench/gpu/gpu_check.py: fused vs eager timings, fp32 and bf16, layers + supernet 160 s
#   search   fbnet-fast search on cuda (fbnet-cifar w0.25, 2 epochs, 1024 images, the
#            committed LUT results/study-targets/lut.json so no LUT is measured), wall time  65 s
# Logs and results land in OUT_DIR; gpu_check.json combines them (GPU, versions, tests,
# timings, search wall) and a table is printed at the end. A failed step does not stop the
# later ones (unless they need what failed); the exit code is 1 if any step failed.
set -u

T0=$(date +%s)
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
    "") OUT="$ROOT/bench/results/gpu_check" ;;
    /*) OUT="$1" ;;
    *) OUT="$PWD/$1" ;;
esac
PY="${PYTHON:-python}"
cd "$ROOT" || exit 1

# ---------------------------------------------------------------- (a) no CUDA: syntax only
if ! "$PY" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
    if bash -n "$SELF" && "$PY" -m py_compile bench/gpu/gpu_check.py; then
        echo "gpu_check: no CUDA device (torch.cuda.is_available() is not True): syntax checked, nothing measured"
        exit 0
    fi
    echo "gpu_check: no CUDA device, and the syntax check above FAILED" >&2
    exit 1
fi

unset TRITON_INTERPRET  # compiled kernels only
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the source tree, also if the install fails
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" || exit 1
rm -f "$OUT"/*.log "$OUT"/*.xml "$OUT/kernels.json" "$OUT/gpu_check.json"  # nothing stale in the summary
STEPS="$OUT/steps.tsv"
: >"$STEPS"
BUDGET_S=440
DEADLINE=$(( T0 + BUDGET_S ))

# record NAME STATUS RC SECONDS NOTE  (status: ok, none, failed, timeout, skipped)
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$STEPS"; }
# fail NAME WHY: a step that could not run for a reason that is itself a failure
fail() { record "$1" failed "" 0 "$2"; echo "== $1: FAILED ($2)" >&2; }
# skip NAME WHY: a step left out because an earlier one failed (that one is the failure)
skip() { record "$1" skipped "" 0 "$2"; echo "== $1: SKIPPED ($2)"; }

# step NAME CAP_S CMD...: CMD under `timeout` (CAP_S clipped to the budget left), output to the
# terminal and OUT/NAME.log; records ok / failed / timeout (exit status $NONE_RC, if set: none).
step() {
    local name=$1 cap=$2 left t0 t1 rc secs status note
    shift 2
    left=$(( DEADLINE - $(date +%s) ))
    (( left < cap )) && cap=$left
    if (( cap < 5 )); then
        record "$name" timeout "" 0 "not started: the ${BUDGET_S} s budget is spent"
        echo "== $name: NOT STARTED (budget spent)" >&2
        return 124
    fi
    echo "== $name (timeout ${cap} s): $*"
    t0=$(date +%s.%N)
    timeout -k 5 "$cap" "$@" </dev/null 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok note="" ;;
        "${NONE_RC:-0}") status=none note="nothing selected" ;;
        124|137) status=timeout note="killed after ${cap} s" ;;
        *) status=failed note="exit status $rc" ;;
    esac
    record "$name" "$status" "$rc" "$secs" "${note:+$note; }log $name.log"
    echo "== $name: $status ($secs s)"
    return "$rc"
}

# ------------------------------------------------------------------- (b) install, triton
missing=""
"$PY" -c 'import setuptools, pybind11' >/dev/null 2>&1 || missing="$missing setuptools/pybind11"
command -v cmake >/dev/null 2>&1 || missing="$missing cmake"
command -v ninja >/dev/null 2>&1 || "$PY" -c 'import ninja' >/dev/null 2>&1 || missing="$missing ninja"
if [ -n "$missing" ]; then
    fail install "build tools missing:$missing (pip install pybind11 cmake ninja needs the network); the later steps run from the source tree, the Triton path needs no build"
else
    step install 60 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
fi

have_triton=1
if v=$("$PY" -c 'import triton; print(triton.__version__)' 2>&1); then
    record triton ok 0 0 "triton $v"
    echo "== triton: $v"
else
    have_triton=0
    fail triton "import triton failed (${v##*$'\n'}); fix: install the triton wheel this torch pins (CUDA builds of torch ship it), e.g. pip install 'fbnet-fast[triton]' where there is network"
fi

# ----------------------------------------------------------------------------- (c) tests
PYTEST=("$PY" -m pytest -q -x -rs -p no:cacheprovider)
if (( !have_triton )); then
    for s in tests_triton_gpu tests_triton_aot tests_mixed_op_cuda; do skip "$s" "triton missing"; done
elif ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
    for s in tests_triton_gpu tests_triton_aot tests_mixed_op_cuda; do fail "$s" "pytest missing"; done
else
    step tests_triton_gpu 55 "${PYTEST[@]}" tests/test_triton_kernels.py \
        -k "not interpreter_numerics and not compiles_for_gpu" --junitxml="$OUT/tests_triton_gpu.xml"
    step tests_triton_aot 70 "${PYTEST[@]}" tests/test_triton_kernels.py \
        -k "compiles_for_gpu" --junitxml="$OUT/tests_triton_aot.xml"
    # pytest exits 5 when -k selects nothing: the file has no CUDA case (today it has none)
    NONE_RC=5 step tests_mixed_op_cuda 15 "${PYTEST[@]}" tests/test_mixed_op.py \
        -k "cuda or gpu or triton" --junitxml="$OUT/tests_mixed_op_cuda.xml"
fi

# --------------------------------------------------------------------- (d) kernel timings
if (( have_triton )); then
    step kernels 160 "$PY" bench/gpu/gpu_check.py --out "$OUT/kernels.json"
else
    skip kernels "triton missing"
fi

# -------------------------------------------------------------------------- (e) a search
SEARCH=("$PY" -m fbnet_fast search --device cuda --kernel triton --lut results/study-targets/lut.json
        --epochs 2 --warmup-epochs 1 --num-train 1024 --num-val 256 --no-plots --no-progress
        --no-measure-result --out "$OUT/search" --overwrite)
if (( have_triton )); then
    step search 65 "${SEARCH[@]}"
else
    skip search "triton missing"
fi

# ------------------------------------------------------------------------- summary, table
timeout -k 5 25 "$PY" - "$OUT" "${SEARCH[*]}" <<'EOF'
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

out, search_cmd = Path(sys.argv[1]), sys.argv[2]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, rc, secs, note = (line.split("\t") + [""] * 5)[:5]
    steps.append(dict(name=name, status=status, rc=int(rc) if rc else None, seconds=float(secs or 0), note=note))
by_name = {s["name"]: s for s in steps}


def junit(name):
    path = out / f"{name}.xml"
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return n


try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
except (OSError, subprocess.SubprocessError, IndexError):
    driver = None
kernels = json.loads((out / "kernels.json").read_text()) if (out / "kernels.json").is_file() else None
p = torch.cuda.get_device_properties(0)
ok = all(s["status"] in ("ok", "none") for s in steps)
summary = {
    "ok": ok,
    "gpu": torch.cuda.get_device_name(0), "capability": f"{p.major}.{p.minor}",
    "memory_gib": round(p.total_memory / 2**30, 1), "driver": driver,
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    "triton": triton_version, "python": sys.version.split()[0],
    "steps": steps,
    "tests": {n: junit(n) for n in ("tests_triton_gpu", "tests_triton_aot", "tests_mixed_op_cuda")},
    "kernels": kernels,
    "search": {"command": search_cmd, "status": by_name.get("search", {}).get("status"),
               "wall_s": by_name.get("search", {}).get("seconds"), "run_dir": str(out / "search")},
    "timestamp": time.time(),
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")

print(f"\n{summary['gpu']} (sm_{p.major}{p.minor}, {summary['memory_gib']} GiB, driver {driver}): torch "
      f"{summary['torch']}, CUDA {summary['cuda']}, triton {triton_version}")
print(f"{'step':22s} {'status':8s} {'seconds':>8s}  note")
print("-" * 78)
for s in steps:
    t = summary["tests"].get(s["name"])
    extra = f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped; " if t else ""
    print(f"{s['name']:22s} {s['status']:8s} {s['seconds']:8.1f}  {extra}{s['note']}"[:160])


def ms(v):
    return f"{v:9.3f}" if v is not None else f"{'-':>9s}"


if kernels:
    print(f"\n{'case':30s} {'dtype':5s} {'eager ms':>9s} {'fused ms':>9s} {'eager/fused':>11s}  note")
    print("-" * 78)
    for r in kernels["rows"]:
        ratio = f"{r['ratio']:11.2f}" if r.get("ratio") else f"{'-':>11s}"
        note = "" if r["fused"]["status"] == "ok" else f"fused {r['fused']['status']}"
        print(f"{r['case']:30s} {r['dtype']:5s} {ms(r['eager_ms'])} {ms(r['fused_ms'])} {ratio}  {note}")
print(f"\nsearch wall: {summary['search']['wall_s']} s ({summary['search']['status']})")
print(f"{'all steps passed' if ok else 'SOME STEPS FAILED'}; wrote {out / 'gpu_check.json'}")
sys.exit(0 if ok else 1)
EOF
summary_rc=$?
# The exit status does not rest on the summary alone: any step not ok (or none) fails the check.
if (( summary_rc != 0 )) || awk -F'\t' '$2 != "ok" && $2 != "none" { bad = 1 } END { exit !bad }' "$STEPS"; then
    (( summary_rc != 0 )) && echo "gpu_check: the summary failed (exit status $summary_rc)" >&2
    exit 1
fi
exit 0
