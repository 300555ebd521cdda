"""Collect runs/tight/ (results/tight-0.6/run.sh) into results/tight-0.6/summary.json and print a table."""

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
runs = ROOT / "runs" / "tight"
rows = []
for search in sorted(p for p in runs.iterdir() if p.is_dir() and (p / "theta.json").is_file()):
    # the search's last line: "LUT latency 0.3041 ms (target 0.312197 ms, measured here 0.1738 ms); ..."
    last = [l for l in (runs / f"{search.name}.log").read_text().splitlines() if l.startswith("LUT latency")][-1]
    lut_ms = float(last.split()[2])
    measured_ms = float(last.split("measured here ")[1].split()[0])
    metrics = [json.loads(l) for l in (search / "metrics.jsonl").read_text().splitlines() if l.strip()]
    blocks = json.loads((search / "arch.json").read_text())["blocks"]
    accs = {}
    for t in sorted(runs.glob(f"{search.name}-t*/summary.json")):
        accs[t.parent.name.rsplit("-t", 1)[1]] = json.loads(t.read_text())["last_val_acc"]
    rows.append({"search": search.name, "blocks": " ".join(blocks),
                 "non_skip": sum(b != "skip" for b in blocks),
                 "lut_ms": lut_ms, "measured_here_ms": measured_ms,
                 "supernet_val_acc": metrics[-1].get("val_acc"),
                 "argmax_ms_after_first_search_epoch": metrics[2].get("argmax_latency_ms"),
                 "expected_ms_after_first_search_epoch": metrics[2].get("expected_latency_ms"),
                 "val_acc_by_train_seed": accs,
                 "val_acc_median": statistics.median(accs.values()) if accs else None})
(Path(__file__).parent / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
for r in rows:
    print(r["search"], r["non_skip"], r["lut_ms"], r["measured_here_ms"], r["supernet_val_acc"],
          r["val_acc_by_train_seed"], r["blocks"])
