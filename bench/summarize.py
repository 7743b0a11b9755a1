#!/usr/bin/env python3
"""Summarise run directories (log.jsonl) into a Markdown table: final train loss, best and final
validation loss, gap to a reference variant, tokens/s, peak memory, state bytes per weight.
Variants named NAME-sSEED are grouped, and their mean and spread (max - min) reported.
Memory says what it counts: peak_mem_bytes is the process's peak RSS on the CPU but only the
CUDA model's own buffers on a GPU ([run] device = cuda in the run's config.ini); GPU runs that
logged device_peak_bytes (cudaMemGetInfo's total - free, the whole device) get that column too.
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


def on_gpu(run):
    """[run] device = cuda in the run's config.ini."""
    section = ""
    try:
        with open(os.path.join(run, "config.ini")) as f:
            for line in f:
                line = line.strip()
                if line.startswith("["):
                    section = line
                elif section == "[run]" and line.replace(" ", "") == "device=cuda":
                    return True
    except OSError:
        pass
    return False


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
            "dev": max((j.get("device_peak_bytes", 0) for j in rows + evals), default=0),
            "gpu": on_gpu(p),
            "state": start.get("state_bytes_per_weight", 0.0),
            "index": start.get("index_bytes_per_weight", 0.0),
            "steps": rows[-1]["step"] if rows else 0,
        })
    refv = statistics.mean(r["val"] for r in groups[ref]) if ref in groups else None
    runs = [r for rs in groups.values() for r in rs]
    gpu = [r["gpu"] for r in runs]
    mem = ("model buffers, peak (MB)" if gpu and all(gpu) else
           "peak RSS (MB)" if not any(gpu) else
           "peak RSS (CPU) / model buffers (GPU) (MB)")
    dev = any(r["dev"] for r in runs)
    print("| variant | seeds | val loss (final) | mean | vs %s | train loss | tokens/s | %s | %s"
          "state B/weight | index B/weight |" % (ref, mem, "whole device (MB) | " if dev else ""))
    print("| --- " * (11 if dev else 10) + "|")
    for name, rs in groups.items():
        vals = [r["val"] for r in rs]
        mean = statistics.mean(vals)
        gap = "—" if refv is None or name == ref else "%+.1f%%" % (100 * (mean / refv - 1))
        d = max(r["dev"] for r in rs)
        print("| %s | %d | %s | %.4f | %s | %.4f | %.0f | %.0f | %s%.2f | %.2f |" % (
            name, len(rs), " / ".join("%.4f" % v for v in vals), mean, gap,
            statistics.mean(r["train"] for r in rs), statistics.mean(r["tps"] for r in rs),
            max(r["mem"] for r in rs) / 1e6,
            ("%.0f | " % (d / 1e6) if d else "— | ") if dev else "",
            rs[0]["state"], rs[0]["index"]))


if __name__ == "__main__":
    main()
