# How search_heldout_and_pairs_18seeds.txt was made (seventeenth session): the run folders were /tmp/s17/sw (12 fused
# runs on main, seeds 0-11), /tmp/s17/pair (seeds 0-3, reference then fused) and /tmp/s17/pair2 (seeds 12-17), each made
# by bench/cpu/search_wall.py with --lut bench/results/lut_runtimes/ort1.json; the reference figures of seeds 0-11 are
# the sixteenth session's (bench/results/session16/search_wall_epochs.txt, skips: search_wall_skips.txt), checked
# below against this session's re-runs of seeds 0-3 (the same figures).
import json, re, statistics as st, pathlib
def acc_sk(d):
    t = (d / "summary.txt").read_text()
    return (float(re.search(r"supernet val acc ([0-9.]+)", t).group(1)) * 100,
            len(re.findall(r"^\s+\d+\s+\S+ s\d \d+px\s+skip\s", t, re.M)),
            float(re.search(r"LUT latency ([0-9.]+) ms", t).group(1)))
ref = {0:38.6,1:49.5,2:48.8,3:48.4,4:29.6,5:46.6,6:32.7,7:40.1,8:45.3,9:48.4,10:31.1,11:42.1}
refsk = {0:10,1:12,2:12,3:13,4:14,5:13,6:13,7:9,8:15,9:14,10:13,11:11}
rows = {}
for s in range(12):
    a, k, l = acc_sk(pathlib.Path(f"/tmp/s17/sw/auto_{s}"))
    rows[s] = dict(f=a, fk=k, r=ref[s], rk=refsk[s])
for s in range(12, 18):
    p = pathlib.Path(f"/tmp/s17/pair2/auto_{s}")
    if not (p / "summary.txt").exists(): continue
    a, k, l = acc_sk(p); b, kk, ll = acc_sk(pathlib.Path(f"/tmp/s17/pair2/reference_{s}"))
    rows[s] = dict(f=a, fk=k, r=b, rk=kk)
for s in range(4):  # re-run references this session: must equal session 16's
    b, kk, _ = acc_sk(pathlib.Path(f"/tmp/s17/pair/reference_{s}")); assert abs(b - ref[s]) < 0.05 and kk == refsk[s], s
    a, k, _ = acc_sk(pathlib.Path(f"/tmp/s17/pair/auto_{s}")); assert abs(a - rows[s]["f"]) < 0.05, s
for s, r in rows.items():
    print(f"seed {s}: fused {r['f']:.1f} ref {r['r']:.1f} diff {r['f']-r['r']:+.1f} skips {r['fk']}/{r['rk']}")
d = [r["f"] - r["r"] for r in rows.values()]; n = len(d)
print(f"n {n}: fused mean {st.mean(r['f'] for r in rows.values()):.2f} ref {st.mean(r['r'] for r in rows.values()):.2f} "
      f"diff {st.mean(d):+.2f} sd {st.stdev(d):.2f} se {st.stdev(d)/n**.5:.2f}; lower {sum(x<0 for x in d)} higher {sum(x>0 for x in d)} within2 {sum(abs(x)<=2 for x in d)}; "
      f"skips {st.mean(r['fk'] for r in rows.values()):.2f} vs {st.mean(r['rk'] for r in rows.values()):.2f}, more on {sum(r['fk']>r['rk'] for r in rows.values())} fewer {sum(r['fk']<r['rk'] for r in rows.values())}")
# speed pairs
pairs = {}
for f in ["/tmp/s17/pair/wall.jsonl", "/tmp/s17/pair2/wall.jsonl"]:
    for l in open(f):
        if not l.startswith("{"): continue
        j = json.loads(l); s = int(re.search(r"--seed (\d+)", j["command"]).group(1))
        pairs.setdefault(s, {})["ref" if "reference" in j["command"] else "fused"] = j
pairs = {s: v for s, v in pairs.items() if len(v) == 2}
fw = [v["fused"]["wall_s"] for v in pairs.values()]; rw = [v["ref"]["wall_s"] for v in pairs.values()]
rat = [v["ref"]["wall_s"] / v["fused"]["wall_s"] for v in pairs.values()]
print("pairs", sorted(pairs), "fused", fw, "ref", rw)
print("ratios", [round(x, 2) for x in rat], f"medians {st.median(fw)} vs {st.median(rw)} = {st.median(rw)/st.median(fw):.3f}; per-seed median {st.median(rat):.2f}; >=2: {sum(x>=2 for x in rat)}/{len(rat)}")
print("rss fused", min(v["fused"]["peak_rss_gb"] for v in pairs.values()), max(v["fused"]["peak_rss_gb"] for v in pairs.values()),
      "ref", min(v["ref"]["peak_rss_gb"] for v in pairs.values()), max(v["ref"]["peak_rss_gb"] for v in pairs.values()))
