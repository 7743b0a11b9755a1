#!/usr/bin/env python3
"""check-hf-export.py: transformers against primal-eval on a `primal-export --format hf`
directory (docs/EXPORT.md).  Needs torch, transformers and safetensors; CI has none of them, so
this is run by hand (on the GPU machine, say).

    primal-eval CKPT --tokens IDS.safetensors -o EVAL.safetensors
    python3 scripts/check-hf-export.py DIR EVAL.safetensors IDS.safetensors [--tol T]
                                       [--text FILE]

Loads DIR with AutoModelForCausalLM in float32 (a bf16 or f16 export is widened, so what is
compared is the rounding of the weights alone), runs IDS' input_ids, and prints
max |logits_hf - logits_primal| / max |logits_primal|; exit status 1 when it is over T (default
1e-5 for a float32 export, 2e-3 for float16, 2e-2 for bfloat16: the bounds that
tests/export_test.sh holds primal-import's reading of the same directory to).  --text FILE: the
directory's tokenizer (AutoTokenizer) must encode the file to the ids of IDS.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("eval")
    ap.add_argument("ids")
    ap.add_argument("--tol", type=float)
    ap.add_argument("--text")
    a = ap.parse_args()
    with open(os.path.join(a.dir, "config.json")) as f:
        dtype = json.load(f).get("torch_dtype", "float32")
    tol = a.tol if a.tol is not None else {"float32": 1e-5, "float16": 2e-3}.get(dtype, 2e-2)
    ids = load_file(a.ids)["input_ids"].long()
    ref = load_file(a.eval)["logits"].float()
    model = AutoModelForCausalLM.from_pretrained(a.dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    rel = ((logits - ref).abs().max() / ref.abs().max()).item()
    same = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"{a.dir} ({dtype}): max |hf - primal| / max |primal| = {rel:.3e} (tolerance {tol:g});"
          f" the same likeliest token at {same:.1%} of positions")
    ok = rel <= tol
    if a.text is not None:
        with open(a.text, encoding="utf-8") as f:
            got = AutoTokenizer.from_pretrained(a.dir).encode(f.read(), add_special_tokens=False)
        want = ids[0].tolist()
        print(f"tokenizer: {len(got)} ids, primal {len(want)}: "
              f"{'the same' if got == want else 'DIFFERENT'}")
        ok = ok and got == want
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
