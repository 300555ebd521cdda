# How search_heldout_18seeds.txt was made (twenty-fourth session, AMD EPYC Zen 4, AVX-512, v4, 2 threads): the fused
# runs of seeds 0 and 2-17 were made on main at 704c699 (a worktree with its own build, nothing else timed beside
# them) by `python bench/cpu/search_wall.py -- --out /tmp/s24/runs/fused2t_sS --no-progress --lut
# bench/results/lut_runtimes/ort1.json --seed S` (search_fused_2t_18seeds.jsonl); seed 1's fused figure is the
# twenty-third session's on the same code (58.4 %; its seed 0, 47.2 %, re-ran here to the digit). The reference
# figures are the seventeenth session's (bench/results/session17/search_heldout_and_pairs_18seeds.txt): the
# reference path's code and bits have not changed since (its seeds 0 and 1 re-ran in the twenty-third session to
# 38.6 / 49.5 %, the seventeenth session's to the digit).
import json, pathlib, re, statistics as st

here = pathlib.Path(__file__).parent
ref = {}
for line in (here.parent / "session17" / "search_heldout_and_pairs_18seeds.txt").read_text().splitlines():
    m = re.match(r"seed (\d+): fused ([\d.]+) ref ([\d.]+)", line)
    if m:
        ref[int(m.group(1))] = float(m.group(3))
fused = {1: 58.4}
for line in (here / "search_fused_2t_18seeds.jsonl").read_text().splitlines():
    d = json.loads(line)
    t = (pathlib.Path(d["result"]["command"].split("--out ")[1].split()[0]) / "summary.txt").read_text()
    fused[d["seed"]] = float(re.search(r"supernet val acc ([0-9.]+)", t).group(1)) * 100
diff = []
for s in sorted(fused):
    print(f"seed {s}: fused {fused[s]:.1f} ref {ref[s]:.1f} diff {fused[s] - ref[s]:+.1f}")
    diff.append(fused[s] - ref[s])
n = len(diff)
print(f"n {n}: fused mean {st.mean(fused.values()):.2f} ref {st.mean(ref[s] for s in fused):.2f} "
      f"diff {st.mean(diff):+.2f} sd {st.stdev(diff):.2f} se {st.stdev(diff) / n ** .5:.2f}; "
      f"fused higher on {sum(x > 0 for x in diff)}, lower on {sum(x < 0 for x in diff)}")
