#!/usr/bin/env python3
"""grid-stats.py: how a grid meets the weights that a snap puts on it (docs/QUALITY.md, "Grids:
Lloyd-Max and prime_harmonic65k").  Standard library only.

    scripts/grid-stats.py [--primal-grid PATH] [--cols N] [--rows N] [--lr X] [--std S]
                          GRID[:key=value,...]...

GRID is a name for primal-grid, e.g. prime13, nf4, prime_harmonic65k, lloyd_max:size=16.
For each grid, rows of N(0, std) weights of --cols columns are snapped as the model snaps them
(core/model.c: scale = the row's max |w|, index = the nearest entry of w / scale), and it prints
- the entries' spread: how many lie within |x| < 1e-3, 1e-2, 0.1, and their gaps (the one at 0,
  the median, the largest, the one at the ends);
- where the weights fall: the entropy of the index (the bits a weight really uses, for
  w / scale ~ N(0, (std / mean scale)^2)), and the snap's relative error E[(w - w_q)^2] / E[w^2];
- what a policy that moves at most one entry per step (momentum_carry: its residual saturates at
  one gap, SPEC.md) can do: the move that Adam's unit step asks for in grid units, lr / scale
  (lr = --lr, scale = the mean row scale), against the local gap (its median over the weights:
  above 1 the one-entry cap binds, and the cap cuts the step by that factor), and the steps it
  takes to move a weight at 1 std of the weights to 0, one entry per step, and how far toward
  0 it gets in --steps steps (reach, in stds of the weights; 1 = all the way).
Columns: in_1e-3 ... in_0.1 count entries, w_in_1e-2 is the fraction of weights with
|w / scale| < 1e-2; gaps are in grid units (the row scale multiplies them).
"""
import argparse
import bisect
import math
import random
import subprocess
import sys


def load(primal_grid, spec):
    name, _, keys = spec.partition(":")
    cmd = [primal_grid, name]
    for kv in filter(None, keys.split(",")):
        cmd += ["--set", kv]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]


def nearest(grid, v):
    """core/model.c's nearest(): the first entry >= v or its left neighbour, ties to the lower"""
    lo = bisect.bisect_left(grid, v)
    if lo == 0:
        return 0
    if lo == len(grid):
        return len(grid) - 1
    return lo if grid[lo] - v < v - grid[lo - 1] else lo - 1


def stats(grid, args):
    n = len(grid)
    gaps = [b - a for a, b in zip(grid, grid[1:])]
    rng = random.Random(0)
    err = sig = 0.0
    small = 0
    scales, local = [], []
    for _ in range(args.rows):
        w = [rng.gauss(0.0, args.std) for _ in range(args.cols)]
        s = max(abs(x) for x in w)
        scales.append(s)
        for x in w:
            i = nearest(grid, x / s)
            small += abs(x / s) < 1e-2
            err += (x - grid[i] * s) ** 2
            sig += x * x
            # the gap on the side the weight would move to (either: the mean of the two)
            g = [gaps[j] for j in (i - 1, i) if 0 <= j < n - 1]
            local.append(sum(g) / len(g))
    total = args.rows * args.cols
    scale = sum(scales) / len(scales)
    local.sort()
    med_local = local[len(local) // 2]
    z = bisect.bisect_left(grid, 0.0)
    gap0 = grid[z + 1] - grid[z] if grid[z] == 0.0 else grid[z] - grid[z - 1]
    one_sd = args.std / scale  # a weight at 1 std, in grid units
    i1 = bisect.bisect_left(grid, one_sd)
    steps_to_zero = i1 - bisect.bisect_left(grid, 0.0)
    reach = min(1.0, (one_sd - grid[max(i1 - args.steps, i1 - steps_to_zero)]) / one_sd)
    # the index's entropy under x = w / scale ~ N(0, one_sd^2), cell by cell (exact, where the
    # sampled count would be short of samples for a 65,536-entry grid)
    cdf = [0.0] + [0.5 * math.erfc(-(a + b) / 2 / one_sd / math.sqrt(2)) for a, b in
                   zip(grid, grid[1:])] + [1.0]
    ent = -sum(q * math.log2(q) for q in (b - a for a, b in zip(cdf, cdf[1:])) if q > 0)
    ask = args.lr / scale
    return {
        "size": n,
        "bits": 4 if n <= 16 else 8 if n <= 256 else 16,
        "in_1e-3": sum(1 for x in grid if abs(x) < 1e-3),
        "in_1e-2": sum(1 for x in grid if abs(x) < 1e-2),
        "in_0.1": sum(1 for x in grid if abs(x) < 0.1),
        "w_in_1e-2": small / total,
        "gap_0": gap0,
        "gap_median": sorted(gaps)[len(gaps) // 2],
        "gap_max": max(gaps),
        "gap_end": gaps[-1],
        "entropy": ent,
        "rel_mse": err / sig,
        "scale": scale,
        "ask_over_gap": ask / med_local,
        "steps_1sd_to_0": steps_to_zero,
        "reach": reach,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--primal-grid", default="primal-grid")
    ap.add_argument("--cols", type=int, default=128)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("grids", nargs="+")
    args = ap.parse_args()
    cols = ["grid", "size", "bits", "in_1e-3", "in_1e-2", "in_0.1", "w_in_1e-2", "gap_0",
            "gap_median", "gap_max", "gap_end", "entropy", "rel_mse", "scale",
            "ask_over_gap", "steps_1sd_to_0", "reach"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for spec in args.grids:
        st = stats(load(args.primal_grid, spec), args)
        row = [spec]
        for c in cols[1:]:
            v = st[c]
            row.append(str(v) if isinstance(v, int) else f"{v:.3g}")
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
