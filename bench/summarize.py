#!/usr/bin/env python3
"""Summarise run directories (log.jsonl) into a Markdown table: final train loss, best and final
validation loss, gap to a reference variant, tokens/s, peak memory, state bytes per weight.
Variants named NAME-sSEED are grouped, and their mean and spread (max - min) reported.
Usage: bench/summarize.py RUNS_DIR [--ref adamw]"""
import json
import os
import statistics
import sys


def read(run):
    rows, evals, start = [], [], {}
    with open(os.path.join(run, "log.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if j.get("event") == "start":
                start = j
            elif "val_loss" in j:
                evals.append(j)
            elif "loss" in j and "event" not in j:
                rows.append(j)
    return rows, evals, start


def main():
    root = sys.argv[1]
    ref = sys.argv[sys.argv.index("--ref") + 1] if "--ref" in sys.argv else "adamw"
    groups = {}
    for d in sorted(os.listdir(root)):
        p = os.path.join(root, d)
        if not os.path.isfile(os.path.join(p, "log.jsonl")):
            continue
        name, _, seed = d.rpartition("-s")
        if not seed.isdigit():
            name = d
        rows, evals, start = read(p)
        if not evals:
            continue
        tps = [r["tokens_per_s"] for r in rows[1:]] or [0]
        groups.setdefault(name, []).append({
            "val": evals[-1]["val_loss"],
            "best": min(e["val_loss"] for e in evals),
            "train": rows[-1]["loss"] if rows else float("nan"),
            "tps": statistics.median(tps),
            "mem": max(r["peak_mem_bytes"] for r in rows) if rows else 0,
            "state": start.get("state_bytes_per_weight", 0.0),
            "index": start.get("index_bytes_per_weight", 0.0),
            "steps": rows[-1]["step"] if rows else 0,
        })
    refv = statistics.mean(r["val"] for r in groups[ref]) if ref in groups else None
    print("| variant | seeds | val loss (final) | mean | vs %s | train loss | tokens/s | "
          "peak RSS (MB) | state B/weight | index B/weight |" % ref)
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in groups.items():
        vals = [r["val"] for r in rs]
        mean = statistics.mean(vals)
        gap = "—" if refv is None or name == ref else "%+.1f%%" % (100 * (mean / refv - 1))
        print("| %s | %d | %s | %.4f | %s | %.4f | %.0f | %.0f | %.2f | %.2f |" % (
            name, len(rs), " / ".join("%.4f" % v for v in vals), mean, gap,
            statistics.mean(r["train"] for r in rs), statistics.mean(r["tps"] for r in rs),
            max(r["mem"] for r in rs) / 1e6, rs[0]["state"], rs[0]["index"]))


if __name__ == "__main__":
    main()
