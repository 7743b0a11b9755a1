"""tokenize_speed.py: Hugging Face `tokenizers` encoding speed, the reference for
bench/tokenize_speed.sh.

    python3 tokenize_speed.py TOKENIZER_JSON TEXT [PRIMAL_IDS]

Encodes TEXT as one string (add_special_tokens=False, one thread), best CPU time of 3 runs, and
prints "MB_PER_S MATCH": MATCH is true/false when PRIMAL_IDS (primal-tokenize's text output for
the same TEXT) is given and equals HF's ids, else null.  Loading the tokenizer is not timed."""
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer  # noqa: E402


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    best, ids = None, None
    for _ in range(3):
        t0 = time.process_time()
        enc = tok.encode(text, add_special_tokens=False)
        dt = time.process_time() - t0
        best = dt if best is None else min(best, dt)
        ids = enc.ids
    match = "null"
    if len(sys.argv) > 3:
        with open(sys.argv[3]) as f:
            mine = [int(x) for x in f.read().split()]
        match = "true" if mine == list(ids) else "false"
    print("%.1f %s" % (len(raw) / best / 1e6, match))


if __name__ == "__main__":
    main()
