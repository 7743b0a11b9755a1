#!/usr/bin/env python3
"""Sum Nsight Compute's per-kernel durations by kernel name (bench/gpu_train.sh ncu124m).

Input: `ncu --csv --metrics gpu__time_duration.sum --print-units base` output.  Output: JSON,
one object per kernel name with calls and total milliseconds, largest first, and the total."""
import csv
import json
import sys
from collections import defaultdict


def main(path):
    tot = defaultdict(float)
    calls = defaultdict(int)
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own ==PROF== lines are not CSV
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0]
        tot[name] += float(row["Metric Value"].replace(",", "")) / 1e6  # ns -> ms
        calls[name] += 1
    rows = sorted(tot, key=tot.get, reverse=True)
    total = sum(tot.values())
    print(json.dumps({"total_ms": round(total, 3),
                      "kernels": [{"name": n[:120], "calls": calls[n], "ms": round(tot[n], 3),
                                   "share": round(tot[n] / total, 4)} for n in rows]},
                     indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
