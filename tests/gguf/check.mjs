// check.mjs: llama.cpp (node-llama-cpp 3.21.1, CPU) against primal-eval on one GGUF file that
// primal-export wrote (tests/gguf_test.sh; docs/EXPORT.md).
//   node check.mjs MODEL.gguf --ids FILE [--eval EVAL.safetensors] [--tol T] [--f16-cache]
//                  [--text FILE]
// --ids FILE: token ids, whitespace-separated (primal-tokenize's output).
// --text FILE: llama.cpp's own tokenization of the file's text must give exactly those ids.
// --eval: primal-eval's output for those ids (logits F32 [1, T, V]).  llama.cpp evaluates the
// same ids and gives, at every position, the softmax of its logits (with the greedy sampler,
// the raw logits).  Prints the largest |log p_llama.cpp - log p_primal| over all positions and
// tokens, and how many positions have the same likeliest token; fails when the former is over
// T (default 1e-4) or when the likeliest tokens differ at a position where primal's top two
// logits are more than 2T apart (closer ones may swap within the tolerance).
// The KV cache is f32 (llama.cpp's default is f16) unless --f16-cache, and flash attention is
// off, so that an f32 GGUF is computed in f32 throughout.
// The package comes from $PRIMAL_NODE_MODULES (a node_modules folder) when set.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const opt = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
};
const modelPath = args[0];
const ids = readFileSync(opt("--ids"), "utf8").trim().split(/\s+/).filter((s) => s !== "")
    .map(Number);
const evalPath = opt("--eval");
const textPath = opt("--text");
const tol = Number(opt("--tol") ?? "1e-4");
const f16Cache = args.includes("--f16-cache");

const nm = process.env.PRIMAL_NODE_MODULES;
const { getLlama, LlamaLogLevel } = await import(
    nm ? pathToFileURL(join(nm, "node-llama-cpp", "dist", "index.js")).href : "node-llama-cpp");
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error,
                               progressLogs: false, maxThreads: 1 });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
let ok = true;
if (textPath !== undefined) {
    const got = model.tokenize(readFileSync(textPath, "utf8"), true);
    const bad = got.findIndex((t, i) => t !== ids[i]);
    const same = got.length === ids.length && bad < 0;
    console.log(`tokenize ${textPath}: llama.cpp gives ${got.length} ids, primal ${ids.length}: ` +
                (same ? "the same" : `DIFFERENT from position ${bad < 0 ? got.length : bad}`));
    ok &&= same;
}
if (evalPath !== undefined) {
    // safetensors: u64 header length, JSON header, data (little-endian)
    const buf = readFileSync(evalPath);
    const hlen = Number(buf.readBigUInt64LE(0));
    const lt = JSON.parse(buf.subarray(8, 8 + hlen).toString("utf8")).logits;
    const [, T, V] = lt.shape;
    if (T !== ids.length)
        throw new Error(`${evalPath}: logits for ${T} positions, ${ids.length} ids given`);
    const base = 8 + hlen + lt.data_offsets[0];
    const logit = (t, v) => buf.readFloatLE(base + 4 * (t * V + v));

    const cache = f16Cache ? {} : { experimentalKvCacheKeyType: "F32",
                                    experimentalKvCacheValueType: "F32" };
    const n = Math.max(64, ids.length + 8);
    const ctx = await model.createContext({ contextSize: n, batchSize: n, threads: 1,
                                            flashAttention: false, ...cache });
    const out = await ctx.getSequence().controlledEvaluate(
        ids.map((t) => [t, { generateNext: { probabilities: true } }]));
    let maxDiff = 0, agree = 0, counted = 0, where = "";
    for (let t = 0; t < T; t++) {
        const probs = out[t]?.next?.probabilities;
        if (probs === undefined)
            throw new Error(`llama.cpp gave no probabilities at position ${t}`);
        let mx = -Infinity, arg = -1, second = -Infinity;
        for (let v = 0; v < V; v++) {
            const l = logit(t, v);
            if (l > mx) { second = mx; mx = l; arg = v; } else if (l > second) second = l;
        }
        let s = 0;
        for (let v = 0; v < V; v++) s += Math.exp(logit(t, v) - mx);
        const lse = mx + Math.log(s);
        let best = -1, bestP = -1;
        for (const [tok, p] of probs) {
            if (p > bestP) { bestP = p; best = tok; }
            if (p <= 0) continue;
            const d = Math.abs(Math.log(p) - (logit(t, tok) - lse));
            if (d > maxDiff) { maxDiff = d; where = `position ${t}, token ${tok}`; }
        }
        if (best === arg) agree++;
        if (mx - second > 2 * tol) { counted++; if (best !== arg) ok = false; }
    }
    console.log(`max |log p_llama.cpp - log p_primal| = ${maxDiff.toExponential(3)} (${where}), ` +
                `tolerance ${tol}; the same likeliest token at ${agree} of ${T} positions ` +
                `(required at the ${counted} whose top two are more than ${2 * tol} apart)`);
    if (!(maxDiff <= tol)) ok = false;
    await ctx.dispose();
}
await model.dispose();
await llama.dispose();
process.exit(ok ? 0 : 1);
