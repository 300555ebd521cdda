# How search_heldout_18seeds.txt was made (twenty-fourth session, AMD EPYC Zen 4, AVX-512, v4, 2 threads): the fused
# runs of seeds 0 and 2-17 were made on main at 704c699 (a worktree with its own build) by `python
# bench/cpu/search_wall.py -- --out DIR --no-progress --lut bench/results/lut_runtimes/ort1.json --seed S`
# (search_fused_2t_18seeds.jsonl, summarised by bench/cpu/summarise_pairs.py into search_fused_2t_18seeds.txt);
# seed 1's fused run is the twenty-third session's on the same code (its search_pairs.txt; its seed 0 re-ran here to
# the digit). The reference figures are the seventeenth session's (search_heldout_and_pairs_18seeds.txt there): the
# reference path's code and bits have not changed since (its seeds 0 and 1 re-ran in the twenty-third session to
# the digit). Reads only these committed files.
import pathlib, re, statistics as st

results = pathlib.Path(__file__).parent.parent
ref = {}
for line in (results / "session17" / "search_heldout_and_pairs_18seeds.txt").read_text().splitlines():
    m = re.match(r"seed (\d+): fused ([\d.]+) ref ([\d.]+)", line)
    if m:
        ref[int(m.group(1))] = float(m.group(3))
fused = {}
for f in (results / "session23" / "search_pairs.txt", results / "session24" / "search_fused_2t_18seeds.txt"):
    for line in f.read_text().splitlines():
        m = re.match(r"seed (\d+) fused +AVX-512 \(v4\), 2 thread\(s\):.* held-out ([\d.]+) %", line)
        if m:
            fused[int(m.group(1))] = float(m.group(2))  # the session-24 run of a seed replaces session 23's
assert sorted(fused) == sorted(ref) == list(range(18)), (sorted(fused), sorted(ref))
diff = []
for s in sorted(fused):
    print(f"seed {s}: fused {fused[s]:.1f} ref {ref[s]:.1f} diff {fused[s] - ref[s]:+.1f}")
    diff.append(fused[s] - ref[s])
n = len(diff)
print(f"n {n}: fused mean {st.mean(fused.values()):.2f} ref {st.mean(ref.values()):.2f} "
      f"diff {st.mean(diff):+.2f} sd {st.stdev(diff):.2f} se {st.stdev(diff) / n ** .5:.2f}; "
      f"fused higher on {sum(x > 0 for x in diff)}, lower on {sum(x < 0 for x in diff)}")
