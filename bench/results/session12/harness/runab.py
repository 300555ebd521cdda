"""python runab.py THREADS ROUNDS BASELINE_DIR: dwconv kernels, this checkout vs BASELINE_DIR (a built worktree),
fresh processes alternating; prints medians and baseline / this."""
import subprocess, json, sys, statistics, os
here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.abspath(os.path.join(here, "..", "..", "..", ".."))
roots = {"base": os.path.abspath(sys.argv[3]), "new": repo}; th = sys.argv[1]; rounds = int(sys.argv[2])
R = {k: [] for k in roots}
for r in range(rounds):
    for k, root in roots.items():
        out = subprocess.run([sys.executable, os.path.join(here, "dwab.py"), root, th], capture_output=True, text=True, cwd="/tmp")
        if out.returncode: print(out.stderr); sys.exit(1)
        R[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
for key in R["base"][0]:
    b = statistics.median(d[key] for d in R["base"]); n = statistics.median(d[key] for d in R["new"])
    print(f"{key:32s} base {b:7.3f}  new {n:7.3f}  x{b/n:5.2f}")
