#!/usr/bin/env python3
"""torch_baseline.py: PyTorch baselines for bench/gpu_step.c on the same Llama shape (SPEC.md,
"Figures to beat"): a dense model trained with AdamW, eager and torch.compile, and a
prototype-style indexed model (uint8 index buffers + per-row float scale, W dequantised in
forward, straight-through gradient turned into int16 votes by a threshold-consensus accumulate,
scales trained with AdamW).  bf16 autocast, SDPA (flash) attention, untied head.

Flags (defaults): --dim 768 --layers 12 --heads 12 --ffn 2048 --vocab 50304 --seq 1024
--batch 32 --steps 10 --warmup 3 --variants dense_eager,dense_compile,indexed
Prints one JSON line per variant: {"system", "gpu", "shape", "tokens_per_s", "step_s",
"peak_mem_bytes", "loss"}.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIME13 = sorted([0.0] + [s / p for p in (1, 2, 3, 5, 7, 11) for s in (-1.0, 1.0)])


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


def rope_tables(T, hd, theta, device):
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, device=device).float() / hd)
    ang = torch.outer(torch.arange(T, device=device).float(), inv)
    emb = torch.cat([ang, ang], -1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class DequantW(torch.autograd.Function):
    """W = grid[index] * scale; backward: votes from G (straight-through), dscale."""

    @staticmethod
    def forward(ctx, scale, index, grid, votes):
        w = grid[index.long()] * scale[:, None]
        ctx.save_for_backward(index, grid, votes, scale)
        return w

    @staticmethod
    def backward(ctx, g):
        index, grid, votes, scale = ctx.saved_tensors
        g = g.float()
        gv = grid[index.long()]
        dscale = (g * gv).sum(1)
        gs = g * torch.sign(scale)[:, None]
        pressure = torch.trunc(100.0 * gs / (gs.abs().max() + 1e-30))
        votes.copy_((votes.float() + pressure).clamp(-32760, 32760).to(torch.int16))
        return dscale, None, None, None


class Indexed(nn.Module):
    def __init__(self, rows, cols, grid):
        super().__init__()
        w = torch.randn(rows, cols) * 0.02
        s = w.abs().amax(1).clamp_min(1e-12)
        idx = (w / s[:, None]).unsqueeze(-1).sub(grid.cpu()).abs().argmin(-1)
        self.scale = nn.Parameter(s)
        self.register_buffer("index", idx.to(torch.uint8))
        self.register_buffer("votes", torch.zeros(rows, cols, dtype=torch.int16))
        self.grid = grid

    def weight(self):
        return DequantW.apply(self.scale, self.index, self.grid, self.votes)


class Lin(nn.Module):
    def __init__(self, i, o, grid):
        super().__init__()
        self.ix = Indexed(o, i, grid) if grid is not None else None
        self.lin = nn.Linear(i, o, bias=False) if grid is None else None

    def forward(self, x):
        if self.lin is not None:
            return self.lin(x)
        return F.linear(x, self.ix.weight().to(x.dtype))


class Block(nn.Module):
    def __init__(self, a, grid):
        super().__init__()
        C, H = a.dim, a.heads
        self.H, self.hd = H, C // H
        self.ln1, self.ln2 = RMSNorm(C), RMSNorm(C)
        self.q, self.k, self.v, self.o = (Lin(C, C, grid) for _ in range(4))
        self.gate, self.up = Lin(C, a.ffn, grid), Lin(C, a.ffn, grid)
        self.down = Lin(a.ffn, C, grid)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.ln1(x)
        q = self.q(h).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.k(h).view(B, T, self.H, self.hd).transpose(1, 2)
        v = self.v(h).view(B, T, self.H, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, C))
        h = self.ln2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, a, grid):
        super().__init__()
        self.grid = grid
        if grid is None:
            self.emb = nn.Embedding(a.vocab, a.dim)
        else:
            self.embx = Indexed(a.vocab, a.dim, grid)
        self.blocks = nn.ModuleList(Block(a, grid) for _ in range(a.layers))
        self.norm = RMSNorm(a.dim)
        self.head = Lin(a.dim, a.vocab, grid)
        self.hd = a.dim // a.heads

    def forward(self, tok, tgt):
        if self.grid is None:
            x = self.emb(tok)
        else:
            x = F.embedding(tok, self.embx.weight())
        T = tok.shape[1]
        cos, sin = rope_tables(T, self.hd, 10000.0, tok.device)
        cos, sin = cos.to(torch.bfloat16), sin.to(torch.bfloat16)
        for b in self.blocks:
            x = b(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1))


def run(a, variant):
    dev = "cuda"
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    grid = torch.tensor(PRIME13, device=dev) if variant == "indexed" else None
    model = Model(a, grid).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0 if grid is not None else 0.1,
                            fused=True)
    step_fn = model
    if variant == "dense_compile":
        step_fn = torch.compile(model)

    def step(s):
        g = torch.Generator(device=dev).manual_seed(s)
        tok = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=dev, generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(tok[:, :-1], tok[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for s in range(a.warmup):
        step(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(a.steps):
        loss = step(a.warmup + s)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    out = {
        "system": "pytorch " + torch.__version__ + " " + variant,
        "gpu": torch.cuda.get_device_name(0),
        "shape": {"dim": a.dim, "layers": a.layers, "heads": a.heads, "ffn": a.ffn,
                  "vocab": a.vocab, "seq": a.seq, "batch": a.batch},
        "tokens_per_s": round(a.batch * a.seq / dt, 1),
        "step_s": round(dt, 4),
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "loss": round(float(loss.detach()), 4),
    }
    print(json.dumps(out), flush=True)
    del model, opt, step_fn
    torch.cuda.empty_cache()
    return out


def main():
    p = argparse.ArgumentParser()
    for k, v in (("dim", 768), ("layers", 12), ("heads", 12), ("ffn", 2048), ("vocab", 50304),
                 ("seq", 1024), ("batch", 32), ("steps", 10), ("warmup", 3)):
        p.add_argument("--" + k, type=int, default=v)
    p.add_argument("--variants", default="dense_eager,dense_compile,indexed")
    a = p.parse_args()
    for v in a.variants.split(","):
        try:
            run(a, v)
        except Exception as e:  # one variant failing (e.g. out of memory) should not hide others
            print(json.dumps({"system": "pytorch " + v, "error": str(e)[:300]}), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
