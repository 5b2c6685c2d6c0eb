"""The sampler: greedy decoding, log-probs, sampling statistics, stop criteria, padding and sharding."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from dsmath_jax.generate import Sampler, SamplingParams, filter_logits, sample_tokens
from dsmath_jax.model import CausalLM, get_params, get_preset, set_params
from dsmath_jax.parallel import create_sharded, make_mesh, param_shardings, shard_model


@pytest.fixture(scope="module")
def model():
    # A larger init spread than usual makes the random model's distributions peaked enough for greedy ties
    # to be impossible and stop strings to be reachable.
    return CausalLM(get_preset("tiny", vocab_size=512, initializer_range=0.2, max_seq_len=512), rngs=nnx.Rngs(0))


PROMPTS = ["Natalia sold clips to 48 of her friends", "How many", "Weng earns $12 an hour for babysitting."]


def full_forward_greedy(model, ids, steps, width=64):
    """Greedy decoding by re-running the whole sequence each step (right padding does not affect the
    causal logits of earlier positions, so one compiled width serves every step)."""
    forward = jax.jit(lambda x: model(x))
    ids = list(ids)
    out = []
    for _ in range(steps):
        padded = np.zeros((1, width), np.int32)
        padded[0, :len(ids)] = ids
        token = int(jnp.argmax(forward(jnp.asarray(padded))[0, len(ids) - 1]))
        out.append(token)
        ids.append(token)
    return out


def test_greedy_equals_argmax_of_full_forward_passes(model, tokenizer):
    sampler = Sampler(model, tokenizer, batch_size=4, chunk_size=5)
    params = SamplingParams(max_new_tokens=12, stop_token_ids=())
    results = sampler.generate(PROMPTS, params)
    for prompt, [completion] in zip(PROMPTS, results):
        ids = tokenizer.encode(prompt, add_bos=True)
        assert completion.tokens == full_forward_greedy(model, ids, 12)
        assert completion.finish_reason == "length"
        assert completion.text == tokenizer.decode(completion.tokens)


def test_sampled_logprobs_equal_a_full_forward_pass(model, tokenizer):
    sampler = Sampler(model, tokenizer, batch_size=4, chunk_size=7)
    results = sampler.generate(PROMPTS[:2], SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, n=2,
                                                           stop_token_ids=(), seed=3))
    for prompt, samples in zip(PROMPTS, results):
        ids = tokenizer.encode(prompt, add_bos=True)
        assert samples[0].tokens != samples[1].tokens  # two different samples of the same prompt
        for c in samples:
            full = jnp.asarray([ids + c.tokens])
            logp = jax.nn.log_softmax(model(full)[0], axis=-1)
            want = [float(logp[len(ids) - 1 + t, tok]) for t, tok in enumerate(c.tokens)]
            np.testing.assert_allclose(c.logprobs, want, atol=1e-4)


def test_temperature_and_top_p_match_the_distribution():
    """Frequencies of 20k draws from fixed logits against softmax(logits / T), restricted to the nucleus."""
    logits = jnp.log(jnp.asarray([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]]))
    draws = 20000
    keys = jax.random.split(jax.random.key(0), draws)
    for temperature, top_p, top_k in ((1.0, 1.0, 0), (0.7, 1.0, 0), (1.0, 0.75, 0), (1.3, 1.0, 3)):
        tokens, _ = jax.vmap(lambda k: sample_tokens(k, logits, temperature, top_k, top_p))(keys)  # noqa: B023
        counts = np.bincount(np.asarray(tokens).ravel(), minlength=6)
        probs = np.asarray(jax.nn.softmax(filter_logits(logits / temperature, top_k, top_p)), np.float64)[0]
        support = probs > 0
        assert counts[~support].sum() == 0, (temperature, top_p, top_k, counts)
        chi2 = stats.chisquare(counts[support], draws * probs[support] / probs[support].sum())
        assert chi2.pvalue > 1e-3, (temperature, top_p, top_k, counts, probs)
    # top_p = 0.75 keeps {0.4, 0.25, 0.15}: the smallest prefix reaching 0.75.
    kept = np.isfinite(np.asarray(filter_logits(logits, 0, 0.75)))[0]
    assert kept.tolist() == [True, True, True, False, False, False]


def test_first_token_frequencies_through_the_sampler(model, tokenizer):
    """The sampler's first token follows the model's next-token distribution at temperature 0.8."""
    sampler = Sampler(model, tokenizer, batch_size=256)
    results = sampler.generate([PROMPTS[1]], SamplingParams(max_new_tokens=1, temperature=0.8, n=2048, seed=1,
                                                            stop_token_ids=()))
    counts = np.bincount([c.tokens[0] for c in results[0]], minlength=512)
    ids = tokenizer.encode(PROMPTS[1], add_bos=True)
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray([ids]))[0, -1] / 0.8), np.float64)
    probs /= probs.sum()
    top = np.argsort(-probs)[:8]  # compare the likely tokens, pool the tail
    observed = np.append(counts[top], counts.sum() - counts[top].sum())
    expected = 2048 * np.append(probs[top], 1 - probs[top].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


def test_stop_strings_cut_the_text_even_across_tokens(model, tokenizer):
    sampler = Sampler(model, tokenizer, batch_size=2, chunk_size=4)
    [[free]] = sampler.generate([PROMPTS[0]], SamplingParams(max_new_tokens=24, stop_token_ids=()))
    pieces = [tokenizer.decode(free.tokens[:i]) for i in range(len(free.tokens) + 1)]
    # A stop string that starts inside one token and ends inside the next.
    boundary = next(i for i in range(3, len(free.tokens)) if len(pieces[i]) - len(pieces[i - 1]) >= 2
                    and len(pieces[i + 1]) - len(pieces[i]) >= 2)
    cut = len(pieces[boundary])
    stop = free.text[cut - 1:cut + 1]
    assert free.text.find(stop) == cut - 1, "pick a stop string that first occurs at the boundary"
    [[stopped]] = sampler.generate([PROMPTS[0]], SamplingParams(max_new_tokens=24, stop_token_ids=(),
                                                                stop_strings=("never-there", stop)))
    assert stopped.finish_reason == "stop_string" and stopped.stop == stop
    assert stopped.text == free.text[:cut - 1]
    assert stopped.tokens == free.tokens[:boundary + 1]  # up to the token that completes the string
    assert len(stopped.logprobs) == len(stopped.tokens)


def test_stop_tokens_finish_rows_early_and_independently(model, tokenizer):
    sampler = Sampler(model, tokenizer, batch_size=4, chunk_size=3)
    free = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=10, stop_token_ids=()))
    stop_token = free[0][0].tokens[4]  # the fifth token of the first prompt's greedy output
    stopped = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=10, stop_token_ids=(stop_token,)))
    for [f], [s] in zip(free, stopped):
        if stop_token in f.tokens:
            end = f.tokens.index(stop_token) + 1
            assert s.tokens == f.tokens[:end] and s.finish_reason == "stop_token" and s.stop == stop_token
            assert s.text == tokenizer.decode(f.tokens[:end - 1])
        else:
            assert s.tokens == f.tokens and s.finish_reason == "length"


def test_a_prompt_decodes_the_same_alone_or_in_a_padded_batch(model, tokenizer):
    sampler = Sampler(model, tokenizer, batch_size=4)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=())
    together = sampler.generate(PROMPTS, params)
    for i, prompt in enumerate(PROMPTS):
        alone = sampler.generate([prompt], params)
        assert alone[0][0].tokens == together[i][0].tokens
        np.testing.assert_allclose(alone[0][0].logprobs, together[i][0].logprobs, atol=1e-5)


def test_sharded_sampling_matches(model, tokenizer):
    sampler = Sampler(model, tokenizer, batch_size=8)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=())
    want = sampler.generate(PROMPTS, params)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    sharded = CausalLM(model.config, rngs=nnx.Rngs(0))
    nnx.update(sharded, nnx.state(model))
    shard_model(sharded, mesh)
    assert get_params(sharded)["lm_head"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    got = Sampler(sharded, tokenizer, batch_size=8, mesh=mesh).generate(PROMPTS, params)
    assert [c[0].tokens for c in got] == [c[0].tokens for c in want]


def test_bad_sampling_params_fail():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


@pytest.mark.parametrize("scan", [False, True])
def test_scanned_layers_sample_what_the_unscanned_model_samples(model, tokenizer, scan):
    """The same weights with the blocks stacked for `nnx.scan` (what the full-scale configs train with), on an
    FSDP x tensor mesh, in bf16 compute: the tokens and (within bf16 summation order) log-probs of the unscanned
    bf16 model sampled on one device."""
    from dsmath_jax.train.restore import relayout_layers
    cfg = model.config.replace(dtype="bfloat16")
    plain = CausalLM(cfg, rngs=nnx.Rngs(1))
    set_params(plain, get_params(model))
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    other = create_sharded(lambda: CausalLM(cfg.replace(scan_layers=scan), rngs=nnx.Rngs(1)), mesh)
    params = get_params(model)
    params = relayout_layers(params, scan=True) if scan else params
    set_params(other, jax.device_put(params, param_shardings(other, mesh)))
    params = SamplingParams(max_new_tokens=6, stop_token_ids=())
    want = Sampler(plain, tokenizer, batch_size=8).generate(PROMPTS, params)
    got = Sampler(other, tokenizer, batch_size=8, mesh=mesh, tensor_parallel=2).generate(PROMPTS, params)
    for w, g in zip(want, got):
        assert g[0].tokens == w[0].tokens
        np.testing.assert_allclose(g[0].logprobs, w[0].logprobs, atol=0.03)


def test_decoding_moves_activations_not_weights(model, tokenizer):
    """The decode step runs on the sampler's own weight layout (split over `tensor`, replicated over the rest):
    its collectives move activations only, not the FSDP weight gathers a training layout would repeat for every
    token (the decode loop's body is this step)."""
    from dsmath_jax.generate.sampler import decode_mesh
    from dsmath_jax.parallel.mesh import DEFAULT_RULES, activation_sharding
    from dsmath_jax.plan.compile import collective_bytes
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    sharded = create_sharded(lambda: CausalLM(model.config, rngs=nnx.Rngs(0)), mesh)
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(get_params(sharded)))
    sampler = Sampler(sharded, tokenizer, batch_size=8, mesh=mesh)
    assert dict(sampler.mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2} == dict(decode_mesh(mesh).shape)
    (_, _, _), (_, _, _), (_, step, args) = sampler.executables(16, SamplingParams(max_new_tokens=8))
    moved = collective_bytes(step.lower(*args).compile().as_text())
    assert moved < 0.05 * weights, (moved, weights)
    # The same step on the training layout gathers the weights (the regression this guards against).
    graphdef = nnx.split(sharded)[0]

    def train_layout_step(params, tokens, cache):
        with activation_sharding(mesh, DEFAULT_RULES):
            return nnx.merge(graphdef, params)(tokens, cache=cache)[0]

    from dsmath_jax.model import init_cache
    cache = init_cache(model.config, 8, 32)
    train_moved = collective_bytes(jax.jit(train_layout_step).lower(
        get_params(sharded), jnp.zeros((8, 1), jnp.int32), cache).compile().as_text())
    assert train_moved > 0.2 * weights, (train_moved, weights)
