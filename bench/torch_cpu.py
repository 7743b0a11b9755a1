#!/usr/bin/python3
"""The PyTorch CPU baseline of bench/cpu_step: one training step of the same Llama shape, with
(a) dense float32 weights and AdamW, and (b) prototype-style indexed weights (uint8 indices into
a prime13 grid times a float row scale, dequantised in forward; the straight-through weight
gradient kept whole and turned into threshold_consensus votes).  PyTorch 1.13 (Debian's) has no
scaled_dot_product_attention, so attention is written out.  Prints one JSON object per mode.
Usage: bench/torch_cpu.py [--dim 512 --layers 8 --heads 8 --ffn 1376 --vocab 256 --seq 256
                           --batch 8 --steps 5 --threads 2 --mode dense|indexed|both]"""
import argparse
import json
import math
import os
import platform
import resource
import time

import torch
import torch.nn.functional as F

GRID = torch.tensor([-1, -1 / 2, -1 / 3, -1 / 5, -1 / 7, -1 / 11, 0,
                     1 / 11, 1 / 7, 1 / 5, 1 / 3, 1 / 2, 1], dtype=torch.float32)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class Linear(torch.nn.Module):
    """A weight matrix: dense float, or index + row scale (the prototype's representation)."""

    def __init__(self, out_f, in_f, indexed):
        super().__init__()
        w = torch.randn(out_f, in_f) * 0.02
        self.indexed = indexed
        if indexed:
            scale = w.abs().amax(1).clamp_min(1e-12)
            idx = (w / scale[:, None]).unsqueeze(-1).sub(GRID).abs().argmin(-1)
            self.register_buffer("idx", idx.to(torch.uint8))
            self.register_buffer("votes", torch.zeros(out_f, in_f, dtype=torch.int16))
            self.scale = torch.nn.Parameter(scale)
            self.w = None
        else:
            self.weight = torch.nn.Parameter(w)

    def forward(self, x):
        if not self.indexed:
            return x @ self.weight.t()
        # straight-through: dL/dW is kept (retain_grad) and becomes votes after backward
        self.w = GRID[self.idx.long()] * self.scale[:, None]
        self.w.retain_grad()
        return x @ self.w.t()

    @torch.no_grad()
    def vote_and_flip(self, threshold=20, decay=0.95):
        g = self.w.grad * torch.sign(self.scale)[:, None]
        pressure = torch.trunc(100 * g / g.abs().max().clamp_min(1e-30)).to(torch.int16)
        self.votes = (self.votes.int() + pressure.int()).clamp(-32760, 32760).to(torch.int16)
        fire = self.votes.abs() >= threshold
        step = -torch.sign(self.votes).to(torch.int64)
        new = (self.idx.long() + step).clamp(0, len(GRID) - 1)
        self.idx = torch.where(fire, new, self.idx.long()).to(torch.uint8)
        self.votes = torch.where(fire, torch.zeros_like(self.votes),
                                 torch.trunc(self.votes.float() * decay).to(torch.int16))
        self.w = None


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Block(torch.nn.Module):
    def __init__(self, a, indexed):
        super().__init__()
        d, self.h = a.dim, a.heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (Linear(d, d, indexed) for _ in range(4))
        self.gate, self.up = Linear(a.ffn, d, indexed), Linear(a.ffn, d, indexed)
        self.down = Linear(d, a.ffn, indexed)

    def forward(self, x, cos, sin, causal):
        B, T, D = x.shape
        hd = D // self.h
        n = self.n1(x)
        q = self.q(n).view(B, T, self.h, hd).transpose(1, 2)
        k = self.k(n).view(B, T, self.h, hd).transpose(1, 2)
        v = self.v(n).view(B, T, self.h, hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.o(y)
        n = self.n2(x)
        return x + self.down(F.silu(self.gate(n)) * self.up(n))


class Model(torch.nn.Module):
    def __init__(self, a, indexed):
        super().__init__()
        self.emb = Linear(a.vocab, a.dim, indexed)
        self.blocks = torch.nn.ModuleList(Block(a, indexed) for _ in range(a.layers))
        self.norm = RMSNorm(a.dim)
        self.head = Linear(a.vocab, a.dim, indexed)
        hd = a.dim // a.heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(a.seq).float(), inv)
        self.cos, self.sin = ang.cos(), ang.sin()
        self.causal = torch.triu(torch.ones(a.seq, a.seq, dtype=torch.bool), 1)
        self.indexed = indexed

    def forward(self, idx, targets):
        if self.indexed:
            x = F.embedding(idx, GRID[self.emb.idx.long()] * self.emb.scale[:, None])
        else:
            x = F.embedding(idx, self.emb.weight)
        for b in self.blocks:
            x = b(x, self.cos, self.sin, self.causal)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def run(a, mode):
    torch.manual_seed(0)
    m = Model(a, mode == "indexed")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.randint(0, a.vocab, (a.batch, a.seq))
    times = []
    for s in range(a.steps + 1):
        t0 = time.perf_counter()
        loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if mode == "indexed":
            for mod in m.modules():
                if isinstance(mod, Linear) and mod.w is not None:
                    mod.vote_and_flip()
        if s > 0:  # the first step warms up allocators and thread pools
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {
        "system": "pytorch-%s" % torch.__version__,
        "mode": "dense AdamW" if mode == "dense" else "prototype-style indexed (prime13, votes)",
        "machine": "%s, %d threads" % (cpu_name(), torch.get_num_threads()),
        "shape": {k: getattr(a, k) for k in ("dim", "layers", "heads", "ffn", "vocab", "seq",
                                             "batch")},
        "step_s_median": med,
        "tokens_per_s": a.batch * a.seq / med,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main():
    p = argparse.ArgumentParser()
    for k, v in (("dim", 512), ("layers", 8), ("heads", 8), ("ffn", 1376), ("vocab", 256),
                 ("seq", 256), ("batch", 8), ("steps", 5), ("threads", 2)):
        p.add_argument("--" + k, type=int, default=v)
    p.add_argument("--mode", default="both", choices=["dense", "indexed", "both"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for mode in (["dense", "indexed"] if a.mode == "both" else [a.mode]):
        print(json.dumps(run(a, mode)), flush=True)


if __name__ == "__main__":
    main()
