# How search_pairs.txt was made (eighteenth session): reads the search_wall_*.jsonl files beside it and the run folders
# their commands name (/tmp/s18/..., made by bench/cpu/search_wall.py with --lut bench/results/lut_runtimes/ort1.json):
# a record of how the text file was made, not a tool to re-run. Run from the repository root.
import json
import pathlib
import re
import statistics

HERE = pathlib.Path(__file__).parent


def acc_sk(d):
    t = (d / "summary.txt").read_text()
    return (float(re.search(r"supernet val acc ([0-9.]+)", t).group(1)) * 100,
            len(re.findall(r"^\s+\d+\s+\S+ s\d \d+px\s+skip\s", t, re.M)),
            float(re.search(r"LUT latency ([0-9.]+) ms", t).group(1)))


print("# Default search, reference then fused per seed (bench/cpu/search_wall.py [--as-avx2] -- --out DIR --no-progress")
print("# --lut bench/results/lut_runtimes/ort1.json --seed S [--threads 1] [--kernel reference]); AMD EPYC Zen 4 (family 25")
print("# model 17), eighteenth session, library code of 4486f32. Per epoch: seconds between metrics.jsonl records")
print("# (epochs 1-2 warm-up soft, 3 search soft, 4 decisions, 5-6 single-path).")
for f in ["search_wall_avx2_2t.jsonl", "search_wall_native_1t.jsonl", "search_wall_avx2_1t.jsonl"]:
    print(f"\n## {f}")
    walls = {}
    for line in open(HERE / f):
        d = json.loads(line)
        r = d["result"]
        out = pathlib.Path(re.search(r"--out (\S+)", r["command"]).group(1))
        a, k, lat = acc_sk(out)
        e = [json.loads(x)["elapsed_s"] for x in open(out / "metrics.jsonl")]
        ep = [round(b - a_, 1) for a_, b in zip([0] + e[:-1], e)]
        walls.setdefault(d["seed"], {})[d["kernel"]] = (r["wall_s"], a)
        tag = "AVX2 emulated (v3)" if r["emulated_avx2"] else f"AVX-512 ({r['fused_isa']})"
        print(f"seed {d['seed']} {d['kernel']:9s} {tag}, {r['threads']} thread(s): {r['wall_s']:6.1f} s, "
              f"peak {r['peak_rss_gb']} GB, held-out {a:.1f} %, skips {k}, LUT latency {lat} ms, per epoch {ep}")
    ratios = []
    for s, w in walls.items():
        ratios.append(w["reference"][0] / w["fused"][0])
        print(f"seed {s}: reference / fused = {ratios[-1]:.2f}x")
    ref = statistics.median(w["reference"][0] for w in walls.values())
    fus = statistics.median(w["fused"][0] for w in walls.values())
    print(f"medians {fus:.1f} vs {ref:.1f} s ({ref / fus:.2f}x); per seed {min(ratios):.2f}-{max(ratios):.2f}x, "
          f"{sum(x >= 2 for x in ratios)} of {len(ratios)} >= 2x")
