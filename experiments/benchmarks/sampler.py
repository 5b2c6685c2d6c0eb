"""Decode throughput of our sampler against `transformers` `generate` (KV cache) on the same model.

  python experiments/benchmarks/sampler.py                      # ~100M Llama, batch 64, 256 new tokens, CPU
  python experiments/benchmarks/sampler.py --preset deepseek_1_3b --dtype bfloat16 --no-torch   # GPU

Both decode greedily for exactly `--new` tokens (no stop token) from the same random prompts of `--prompt`
tokens; the time excludes compilation (one warm-up call). Prints JSON with tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from common import MODEL_100M, hf_llama, report
from flax import nnx

from dsmath_jax.generate import Sampler, SamplingParams
from dsmath_jax.model import CausalLM, get_preset


class _IdTokenizer:
    """Token ids in, token ids out: the benchmark measures the model, not a tokenizer."""

    bos_id, eos_id, pad_id = None, None, 0

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def encode(self, text, add_bos=False, add_eos=False):  # noqa: ARG002 - the tokenizer interface
        raise TypeError("the benchmark passes token ids")

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        return ""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    cfg = (get_preset(args.preset) if args.preset else MODEL_100M).replace(dtype=args.dtype)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, (args.batch, args.prompt)).tolist()

    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    sampler = Sampler(model, _IdTokenizer(cfg.vocab_size), batch_size=args.batch, chunk_size=args.chunk)
    params = SamplingParams(max_new_tokens=args.new, stop_token_ids=())
    t0 = time.perf_counter()
    sampler.generate(prompts, params)  # compiles
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampler.generate(prompts, params)
    ours_s = time.perf_counter() - t0
    assert all(len(c[0].tokens) == args.new for c in out)
    result = {"device": jax.devices()[0].device_kind, "cpu_threads": os.cpu_count(), "parameters": cfg.num_params(),
              "dtype": args.dtype, "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new,
              "ours_first_call_s": round(first_s, 2), "ours_s": round(ours_s, 2),
              "ours_tokens_per_s": round(args.batch * args.new / ours_s, 1)}
    if not args.no_torch:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        hf = hf_llama(cfg).eval()
        ids = torch.tensor(prompts)
        kwargs = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, use_cache=True,
                      pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            hf.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
            t0 = time.perf_counter()
            hf.generate(ids, **kwargs)
            hf_s = time.perf_counter() - t0
        result.update(transformers_s=round(hf_s, 2), transformers_tokens_per_s=round(args.batch * args.new / hf_s, 1),
                      ours_vs_transformers=round(hf_s / ours_s, 2))
    report(result, args.output)


if __name__ == "__main__":
    main()
