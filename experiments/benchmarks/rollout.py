"""Useful generated tokens/s of the rollout engine against the static sampler on a GRPO-shaped workload.

  python experiments/benchmarks/rollout.py                      # CPU: ~5M Llama, 8 questions x G 16
  python experiments/benchmarks/rollout.py --torch              # + transformers `generate` on the same weights
  python experiments/benchmarks/rollout.py --shared-prefix 512 --group 1 --questions 64 --max-new 64
                                                                # few-shot evaluation: prefix caching on / off
  python experiments/benchmarks/rollout.py --preset deepseek_1_3b --dtype bfloat16 --questions 16 --group 64 \\
      --batch 256 --max-new 1024 --mean-len 300                 # GPU

Workload: Q questions x G samples at temperature 1 from a random-weight Llama; prompts of random tokens with
lengths in [prompt/2, prompt]. Lengths get a long tail from stop tokens: `vocab / mean_len` random token ids
stop a row, so each step stops it with probability ~1/mean_len (a geometric length, capped at --max-new).
Both arms draw with per-row keys (`SamplingParams.row_keys`), so they generate the same completions and the
useful tokens (every generated token up to and including the stop token) are the same.

Equal KV memory: the static sampler runs batches of --batch rows with a cache of (prompt bucket + max_new)
tokens per row; the engine runs --batch slots of the same length. Arms alternate in rotating order after a
warm-up call each (which compiles); the report gives medians over rounds. With --torch, `transformers`
`generate` (static batches of --batch rows, sampling, the stop ids as eos, OMP_WAIT_POLICY=PASSIVE; one arm
per --hf-cache: dynamic and static KV cache) joins the rotation on the same weights exported with `save_hf`;
its samples differ (its own RNG), so its useful tokens are counted from its own completions.
With --shared-prefix N every prompt starts with the same N tokens (a few-shot evaluation's exemplars) and the
engine also runs with prefix caching off (`engine_no_prefix_cache`).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (--torch): idle threads sleep

import statistics
import tempfile
import time

import jax
import numpy as np
from common import report
from flax import nnx

from dsmath_jax.generate import Sampler, SamplingParams
from dsmath_jax.generate.engine import Engine
from dsmath_jax.model import CausalLM, ModelConfig, get_preset
from dsmath_jax.model.hf import save_hf

# ~5M parameters: a 2-core CPU decodes the default workload (128 rows of up to 256 tokens) in seconds per arm.
MODEL_5M = ModelConfig(vocab_size=4096, d_model=256, num_layers=4, num_heads=4, mlp_dim=704, max_seq_len=2048)


class _IdTokenizer:
    """Token ids in, token ids out: the benchmark measures generation, not a tokenizer."""

    bos_id, eos_id, pad_id = None, None, 0

    def encode(self, text, add_bos=False, add_eos=False):  # noqa: ARG002 - the tokenizer interface
        raise TypeError("the benchmark passes token ids")

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        return ""


def _bucket(n: int) -> int:
    size = 16
    while size < n:
        size *= 2
    return size


def _hf_arm(model: CausalLM, prompts: list[list[int]], args, stops: tuple[int, ...], cache: str):
    """A callable running `transformers` generate over the workload in static batches with a "dynamic" or
    "static" KV cache; returns the useful tokens."""
    import torch  # optional arm: only with --torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, os.path.join(tmp, "model"))
        hf = transformers.LlamaForCausalLM.from_pretrained(os.path.join(tmp, "model"), torch_dtype=torch.float32)
    hf.eval()
    rows = [p for p in prompts for _ in range(args.group)]
    stop_set = set(stops)

    def run() -> int:
        useful = 0
        torch.manual_seed(0)
        for start in range(0, len(rows), args.batch):
            batch = rows[start:start + args.batch]
            width = max(len(r) for r in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):  # left padding
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            kwargs: dict = dict(max_new_tokens=args.max_new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                eos_token_id=list(stops), pad_token_id=0, use_cache=True)
            if cache == "static":
                kwargs["cache_implementation"] = "static"
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=mask, **kwargs)[:, width:].tolist()
            for row in out:
                n = next((i + 1 for i, t in enumerate(row) if t in stop_set), len(row))
                useful += n
        return useful

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="a model preset (default: a ~5M Llama)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--group", type=int, default=16, help="G: samples per question")
    parser.add_argument("--prompt", type=int, default=64, help="longest prompt (tokens)")
    parser.add_argument("--max-new", type=int, default=256)
    parser.add_argument("--mean-len", type=float, default=32.0, help="mean length of the geometric stop")
    parser.add_argument("--batch", type=int, default=16, help="static batch size = engine slots")
    parser.add_argument("--chunk", type=int, default=16, help="engine decode chunk")
    parser.add_argument("--static-chunk", type=int, default=32, help="static sampler decode chunk (its default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="add transformers generate as an arm")
    parser.add_argument("--hf-cache", nargs="+", choices=("dynamic", "static"), default=["dynamic", "static"],
                        help="transformers KV cache(s), one arm each")
    parser.add_argument("--shared-prefix", type=int, default=0,
                        help="tokens every prompt starts with (adds the engine without prefix caching as an arm)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    cfg = (get_preset(args.preset) if args.preset else MODEL_5M).replace(dtype=args.dtype)
    rng = np.random.default_rng(0)
    prefix = rng.integers(1, cfg.vocab_size, args.shared_prefix).tolist()
    prompts = [prefix + rng.integers(1, cfg.vocab_size, int(rng.integers(args.prompt // 2, args.prompt + 1))).tolist()
               for _ in range(args.questions)]
    stops = tuple(int(t) for t in rng.choice(np.arange(1, cfg.vocab_size), max(1, round(cfg.vocab_size /
                                                                                          args.mean_len)),
                                             replace=False))
    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    params = SamplingParams(max_new_tokens=args.max_new, temperature=1.0, n=args.group, stop_token_ids=stops,
                            seed=0, row_keys=True)
    max_len = _bucket(args.shared_prefix + args.prompt) + args.max_new
    sampler = Sampler(model, _IdTokenizer(), batch_size=args.batch, chunk_size=args.static_chunk)
    engine = Engine(model, _IdTokenizer(), slots=args.batch, max_len=max_len, chunk_size=args.chunk)
    kv_static, kv_engine = args.batch * max_len, engine.slots * engine.max_len  # cache tokens held at once

    def run_ours(gen):
        def run() -> int:
            out = gen(prompts, params)
            run.last = out  # type: ignore[attr-defined]
            return sum(len(c.tokens) for cs in out for c in cs)
        return run

    arms = {"static": run_ours(sampler.generate), "engine": run_ours(engine.generate)}
    if args.shared_prefix:
        plain = Engine(model, _IdTokenizer(), slots=args.batch, max_len=max_len, chunk_size=args.chunk,
                       prefix_caching=False)
        arms["engine_no_prefix_cache"] = run_ours(plain.generate)
    if args.torch:
        for cache in args.hf_cache:
            arms[f"transformers_{cache}"] = _hf_arm(model, prompts, args, stops, cache)
    first_s = {}
    for name, run in arms.items():  # warm-up: compiles
        t0 = time.perf_counter()
        run()
        first_s[name] = round(time.perf_counter() - t0, 2)
    static_out, engine_out = arms["static"].last, arms["engine"].last  # type: ignore[attr-defined]
    pairs = [(a, b) for sa, sb in zip(static_out, engine_out) for a, b in zip(sa, sb)]
    identical = sum(a.tokens == b.tokens for a, b in pairs) / len(pairs)
    lengths = np.asarray([len(c.tokens) for cs in engine_out for c in cs])
    # The static sampler decodes each batch of rows until its longest row ends: its slot-steps.
    static_steps = [max(lengths[i:i + args.batch]) for i in range(0, len(lengths), args.batch)]

    rates: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            useful = arms[name]()
            rates[name].append(useful / (time.perf_counter() - t0))
    stats = engine.stats
    median = {name: statistics.median(v) for name, v in rates.items()}
    useful = int(lengths.sum())
    result = {
        "device": jax.devices()[0].device_kind, "cpu_threads": os.cpu_count(), "parameters": cfg.num_params(),
        "dtype": args.dtype, "questions": args.questions, "group": args.group, "prompt_max": args.prompt,
        "shared_prefix": args.shared_prefix,
        "max_new": args.max_new, "mean_len_target": args.mean_len, "stop_ids": len(stops),
        "static_batch": args.batch, "engine_slots": engine.slots, "cache_tokens_static": kv_static,
        "cache_tokens_engine": kv_engine, "engine_chunk": args.chunk,
        "lengths": {"mean": round(float(lengths.mean()), 1), "p50": int(np.median(lengths)),
                    "p90": int(np.percentile(lengths, 90)), "max": int(lengths.max()),
                    "at_cap": round(float((lengths == args.max_new).mean()), 3)},
        "identical_completions_static_vs_engine": round(identical, 4),
        "first_call_s": first_s,
        # Useful tokens per slot-step (a slot decoding one row for one step), and the time per decode step
        # (whole run / steps: prefills and host work included).
        "slot_utilisation": {"static": round(useful / (args.batch * sum(static_steps)), 3),
                             "engine": round(stats["generated"] / max(1, stats["slot_steps"]), 3)},
        "decode_steps": {"static": int(sum(static_steps)), "engine": stats["decode_steps"]},
        "ms_per_decode_step": {"static": round(1000 * useful / median["static"] / sum(static_steps), 2),
                               "engine": round(1000 * useful / median["engine"] / stats["decode_steps"], 2)},
        "engine_mean_attention_window": round(stats["attended_entries"] / max(1, stats["slot_steps"]), 1),
        "engine_decode_chunks": stats["decode_chunks"], "engine_prefill_calls": stats["prefill_calls"],
        "engine_prefill_tokens": stats["prefill_tokens"],
        "useful_tokens_per_s_median": {name: round(v, 1) for name, v in median.items()},
        "useful_tokens_per_s_rounds": {name: [round(x, 1) for x in v] for name, v in rates.items()},
        "engine_vs_static_median": round(median["engine"] / median["static"], 2),
        "engine_vs_static_per_round": [round(e / s, 2) for e, s in zip(rates["engine"], rates["static"])],
    }
    if args.shared_prefix:
        result["engine_vs_no_prefix_cache_per_round"] = [
            round(e / s, 2) for e, s in zip(rates["engine"], rates["engine_no_prefix_cache"])]
        result["engine_vs_no_prefix_cache_median"] = round(median["engine"] / median["engine_no_prefix_cache"], 2)
    if args.torch:
        best = max((name for name in median if name.startswith("transformers")), key=median.__getitem__)
        result["engine_vs_best_transformers_median"] = round(median["engine"] / median[best], 2)
    report(result, args.output)


if __name__ == "__main__":
    main()
