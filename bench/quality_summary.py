#!/usr/bin/env python3
"""The quality table of bench/quality.sh (docs/QUALITY.md).

    quality_summary.py QUALITY.json...
        prints a Markdown table: one line per variant (a row's name less its _sN seed
        suffix, at one shape and step count), the mean final validation loss over its seeds
        and each seed's value, the percentage against the mean of the dense rows (flip.plugin
        adamw) and of the QAT rows (latent_adamw) on the same grid, both at the same shape
        and steps, and the bytes per weight of training state and of the index.  Several files
        (e.g. one per device call) are merged.
    quality_summary.py --collect WORKDIR [--machine S] [--build S] ...
        (bench/quality.sh run) reads the rows named in WORKDIR/order.txt (WORKDIR/NAME/
        config.ini and log.jsonl, WORKDIR/NAME.row) and prints quality.json.

Python 3 standard library only.
"""
import argparse
import configparser
import json
import math
import os
import re
import sys

SHAPE_KEYS = (("model", "dim"), ("model", "layers"), ("model", "heads"), ("model", "kv_heads"),
              ("model", "ffn"), ("model", "vocab"), ("run", "batch"), ("run", "seq_len"),
              ("run", "grad_accum"))
DENSE, QAT = "adamw", "latent_adamw"


def read_config(path):
    cp = configparser.ConfigParser(interpolation=None, strict=False,
                                   inline_comment_prefixes=None)
    cp.optionxform = str
    with open(path, encoding="utf-8") as f:
        cp.read_file(f)
    return cp


def num(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return s
    return int(v) if v.is_integer() and re.fullmatch(r"[-+]?\d+", str(s).strip()) else v


def collect_row(work, name):
    row = {"name": name, "variant": re.sub(r"_s\d+$", "", name), "status": "missing"}
    rowfile = os.path.join(work, name + ".row")
    if os.path.exists(rowfile):
        with open(rowfile, encoding="utf-8") as f:
            rc, wall, cmd = f.read().rstrip("\n").split("\t", 2)
        row.update(rc=int(rc), wall_s=float(wall), command=cmd)
        row["status"] = "ok" if int(rc) == 0 else "failed"
    cfgpath = os.path.join(work, name, "config.ini")
    logpath = os.path.join(work, name, "log.jsonl")
    if os.path.exists(cfgpath):
        cp = read_config(cfgpath)
        g = lambda s, k, d=None: cp.get(s, k, fallback=d)
        row["policy"] = g("flip", "plugin")
        row["grid"] = g("grid", "plugin")
        gkeys = {k: num(v) for k, v in cp.items("grid") if k != "plugin"} \
            if cp.has_section("grid") else {}
        row["grid_keys"] = gkeys
        row["grid_label"] = row["grid"] + "".join(f" {k}={v}" for k, v in sorted(gkeys.items()))
        row["flip"] = {k: num(v) for k, v in cp.items("flip") if k != "plugin"} \
            if cp.has_section("flip") else {}
        row["seed"] = num(g("run", "seed", "0"))
        row["steps"] = num(g("run", "steps"))
        row["shape"] = {k: num(g(s, k, "0")) for s, k in SHAPE_KEYS}
        row["device"] = g("run", "device")
    if os.path.exists(logpath):
        train, val, start = [], [], None
        with open(logpath, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                if o.get("event") == "start":
                    start = o
                elif "val_loss" in o:
                    val.append(o)
                elif "loss" in o and "tokens_per_s" in o:
                    train.append(o)
        if start:
            row["params"] = start.get("params")
            row["state_bytes_per_weight"] = start.get("state_bytes_per_weight")
            row["index_bytes_per_weight"] = start.get("index_bytes_per_weight")
        if train:
            row["steps_done"] = train[-1]["step"]
            row["train_loss_end"] = train[-1]["loss"]
            last = [o["loss"] for o in train[-10:]]
            row["train_loss_last10_mean"] = sum(last) / len(last)
            # the first logged window holds the start-up (allocation, GEMM choice): left out
            tps = [o["tokens_per_s"] for o in (train[1:] or train)]
            row["tokens_per_s_mean"] = sum(tps) / len(tps)
            row["peak_mem_bytes"] = max(o.get("peak_mem_bytes", 0) for o in train)
            row["nan_skips"] = train[-1].get("nan_skips")
        if val:
            row["val_loss"] = val[-1]["val_loss"]
            row["val_step"] = val[-1]["step"]
            row["val_curve"] = [[o["step"], o["val_loss"]] for o in val]
        if "shape" in row:
            sh = row["shape"]
            done = row.get("steps_done", row.get("val_step", 0)) or 0
            row["tokens"] = done * sh["batch"] * sh["seq_len"] * max(sh["grad_accum"], 1)
    if row["status"] == "ok" and not isinstance(row.get("val_loss"), (int, float)):
        row["status"] = "no val_loss"
    return row


def group_key(r):
    """rows compared with each other: the same model shape, batch and steps"""
    return json.dumps([r.get("shape"), r.get("steps")], sort_keys=True)


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def ok(r):
    v = r.get("val_loss")
    return r.get("status") == "ok" and isinstance(v, (int, float)) and math.isfinite(v)


def reference_means(rows):
    """{group: mean dense val_loss}, {(group, grid_label): mean QAT val_loss}"""
    dense, qat = {}, {}
    for r in rows:
        if not ok(r):
            continue
        if r.get("policy") == DENSE:
            dense.setdefault(group_key(r), []).append(r["val_loss"])
        elif r.get("policy") == QAT:
            qat.setdefault((group_key(r), r.get("grid_label")), []).append(r["val_loss"])
    return ({k: mean(v) for k, v in dense.items()}, {k: mean(v) for k, v in qat.items()})


def pct(v, ref):
    if v is None or ref is None:
        return None
    return round(100.0 * (v - ref) / ref, 3)


def collect(a):
    with open(os.path.join(a.collect, "order.txt"), encoding="utf-8") as f:
        names = [n.strip() for n in f if n.strip()]
    rows = [collect_row(a.collect, n) for n in names]
    dense, qat = reference_means(rows)
    for r in rows:
        if ok(r):
            r["vs_dense_pct"] = pct(r["val_loss"], dense.get(group_key(r)))
            r["vs_qat_pct"] = pct(r["val_loss"], qat.get((group_key(r), r.get("grid_label"))))
    out = {
        "benchmark": "quality (bench/quality.sh, examples/linux-c.ini)",
        "machine": a.machine, "build": a.build, "bundle_sha256": a.bundle_sha256,
        "corpus": a.corpus, "corpus_sha256": a.corpus_sha256, "jobs": a.jobs,
        "started": a.started,
        "notes": "val_loss: nats/token at the last evaluation; vs_dense_pct / vs_qat_pct: "
                 "against the mean of this file's adamw / latent_adamw rows (same grid) at "
                 "the same shape and steps; tokens_per_s_mean leaves out the first logged "
                 "window and is shared between rows when jobs > 1",
        "rows": rows,
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


def fmt(v, nd=4):
    return "—" if v is None else f"{v:.{nd}f}"


def fmt_pct(v):
    return "—" if v is None else f"{v:+.1f}%"


def tokens(n):
    if n is None:
        return "—"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def table(files):
    rows, heads = [], []
    for fn in files:
        with open(fn, encoding="utf-8") as f:
            q = json.load(f)
        heads.append(q)
        rows.extend(q.get("rows", []))
    dense, qat = reference_means(rows)
    for q, fn in zip(heads, files):
        print(f"- {fn}: {q.get('machine')}, build {q.get('build')}, "
              f"corpus sha256 {str(q.get('corpus_sha256'))[:16]}…, jobs {q.get('jobs')}")
    print()
    variants = {}
    for r in rows:
        variants.setdefault((r.get("variant", r.get("name")), group_key(r)), []).append(r)
    print("| variant | policy | grid | steps | tokens | val loss (mean) | per seed | vs dense "
          "| vs QAT (same grid) | state B/weight | index B/weight | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = []
    for (var, gk), rs in variants.items():
        good = sorted((r for r in rs if ok(r)), key=lambda r: r.get("seed", 0))
        failed += [r for r in rs if not ok(r)]
        if not good:
            continue
        r0 = good[0]
        m = mean([r["val_loss"] for r in good])
        seeds = " / ".join(f"s{r.get('seed')}: {r['val_loss']:.4f}" for r in good)
        vd = None if r0.get("policy") == DENSE else pct(m, dense.get(gk))
        vq = None if r0.get("policy") in (DENSE, QAT) else pct(m, qat.get((gk, r0.get("grid_label"))))
        grid = "—" if r0.get("policy") == DENSE else r0.get("grid_label")
        tok = r0.get("tokens")
        tps = mean([r["tokens_per_s_mean"] for r in good if r.get("tokens_per_s_mean")])
        print(f"| {var} | {r0.get('policy')} | {grid} | {r0.get('steps_done', r0.get('steps'))} "
              f"| {tokens(tok)} | {m:.4f} | {seeds} | {fmt_pct(vd)} | {fmt_pct(vq)} "
              f"| {fmt(r0.get('state_bytes_per_weight'), 2)} "
              f"| {fmt(r0.get('index_bytes_per_weight'), 2)} "
              f"| {'—' if tps is None else f'{tps / 1e3:.0f}K'} |")
    if failed:
        print()
        for r in failed:
            print(f"- {r.get('name')}: {r.get('status')} (rc {r.get('rc')})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="quality.json files")
    ap.add_argument("--collect", metavar="WORKDIR")
    for k in ("machine", "build", "bundle-sha256", "corpus", "corpus-sha256", "started"):
        ap.add_argument("--" + k)
    ap.add_argument("--jobs", type=int)
    a = ap.parse_args()
    if a.collect:
        collect(a)
    elif a.files:
        table(a.files)
    else:
        ap.error("give QUALITY.json files, or --collect WORKDIR")


if __name__ == "__main__":
    main()
