"""The rollout engine: the static sampler's completions under continuous batching, shared prefills, refills
that leave neighbours alone, incremental stop strings and per-row budgets."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsmath_jax.generate import Sampler, SamplingParams
from dsmath_jax.generate.engine import Engine, _Row, common_prefix_length, scan_stop_strings
from dsmath_jax.model import CausalLM, get_params, get_preset, set_params
from dsmath_jax.parallel import create_sharded, make_mesh, param_shardings
from dsmath_jax.train.restore import relayout_layers

# Three prompt lengths (8, 3 and 15 tokens), one prompt bucket: the engine and the sampler compile once each.
PROMPTS = ["James writes", "How many", "Betty is saving money"]
MAX_NEW = 14
SAMPLED = dict(temperature=1.0, top_p=0.9, top_k=40, row_keys=True)


@pytest.fixture(scope="module")
def model():
    # A wide init spread makes the random model's distributions peaked: no greedy ties, reachable stop strings.
    return CausalLM(get_preset("tiny", vocab_size=512, initializer_range=0.2, max_seq_len=512), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    """One engine (its compiled functions) for every test: 4 slots of 32 tokens, prompts prefilled 2 at a time,
    attention over the first 16 cache entries while every row is short enough, else all 32."""
    return Engine(model, tokenizer, slots=4, max_len=32, chunk_size=4, prefill_rows=2, min_window=16)


@pytest.fixture(scope="module")
def sampler(model, tokenizer):
    return Sampler(model, tokenizer, batch_size=4, chunk_size=5)


def assert_same(got, want, atol=1e-5):
    assert [len(g) for g in got] == [len(w) for w in want]
    for gs, ws in zip(got, want):
        for g, w in zip(gs, ws):
            assert (g.prompt_index, g.sample_index) == (w.prompt_index, w.sample_index)
            assert g.tokens == w.tokens, (g, w)
            np.testing.assert_allclose(g.logprobs, w.logprobs, atol=atol)
            assert (g.text, g.finish_reason, g.stop) == (w.text, w.finish_reason, w.stop), (g, w)


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_engine_equals_the_static_sampler(engine, sampler, sampling):
    """3 prompts of different lengths x n = 3 on 4 slots: slots are refilled as rows stop at different lengths
    (stop tokens taken from a free run), and every completion (tokens, log-probs, text, finish reason) is the
    static sampler's."""
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW, n=3, stop_token_ids=(), seed=5,
                                                   **sampling))
    rows = [c for cs in free for c in cs]
    stops = tuple(dict.fromkeys(c.tokens[3 + 2 * i] for i, c in enumerate(rows[::2])))
    params = SamplingParams(max_new_tokens=MAX_NEW, n=3, stop_token_ids=stops, seed=5, **sampling)
    got = engine.generate(PROMPTS, params)
    assert engine.stats["inserted"] == 9 and engine.stats["prefill_prompts"] == 3
    assert len({len(c.tokens) for cs in got for c in cs}) > 2
    assert 16 * engine.stats["slot_steps"] < engine.stats["attended_entries"] < 32 * engine.stats["slot_steps"]
    assert_same(got, sampler.generate(PROMPTS, params))


def test_samples_share_one_prefill_and_get_a_full_forward_passes_logprobs(model, tokenizer, engine):
    """n = 6 samples of one prompt (more than the 4 slots): one prefill, its cache copied into every slot; each
    sample's log-probs are those of a separate full forward pass over its own prompt + tokens."""
    params = SamplingParams(max_new_tokens=MAX_NEW, n=6, stop_token_ids=(), seed=1, **SAMPLED)
    [samples] = engine.generate([PROMPTS[2]], params)
    assert engine.stats["prefill_prompts"] == 1 and engine.stats["inserted"] == 6
    assert len({tuple(c.tokens) for c in samples}) == 6
    ids = tokenizer.encode(PROMPTS[2], add_bos=True)
    logp = jax.nn.log_softmax(model(jnp.asarray([ids + c.tokens for c in samples])), axis=-1)
    for r, c in enumerate(samples):
        want = [float(logp[r, len(ids) - 1 + t, tok]) for t, tok in enumerate(c.tokens)]
        np.testing.assert_allclose(c.logprobs, want, atol=1e-4)


def test_a_refilled_slot_leaves_its_neighbours_alone(engine):
    """Prompt 0 decodes 14 tokens while its 3 neighbours stop after 2 and prompt 4 takes a freed slot: prompt
    0's completion is what it is alone, and what it is beside neighbours that are never refilled."""
    params = SamplingParams(n=1, stop_token_ids=(), seed=2, **SAMPLED)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[1], PROMPTS[2]]
    busy = engine.generate(prompts, params, max_new_tokens=[14, 2, 2, 2, 9])
    assert engine.stats["inserted"] == 5 and engine.stats["decode_steps"] < 14 + 9  # prompt 4 ran beside 0
    assert [len(c[0].tokens) for c in busy] == [14, 2, 2, 2, 9]
    alone = engine.generate(prompts[:1], params, max_new_tokens=[14])
    quiet = engine.generate(prompts[:4], params, max_new_tokens=[14] * 4)
    # The same tokens; log-probs to float32 rounding (a few ulps: the attention window the engine sizes to its
    # busy slots differs between the three runs, and with it the order of the softmax's sums).
    assert_same(busy[:1], alone, atol=1e-5)
    assert_same(busy[:1], quiet[:1], atol=1e-5)


def test_per_row_budgets_cut_the_same_rows(engine):
    params = SamplingParams(max_new_tokens=7, n=2, stop_token_ids=(), seed=4, **SAMPLED)
    full = engine.generate(PROMPTS, params)
    cut = engine.generate(PROMPTS, params, max_new_tokens=[3, 7, 1])
    for budget, fs, cs in zip([3, 7, 1], full, cut):
        for f, c in zip(fs, cs):
            assert len(c.tokens) == budget and c.finish_reason == "length"
            assert c.tokens == f.tokens[:budget]
            np.testing.assert_allclose(c.logprobs, f.logprobs[:budget], atol=1e-6)


def test_stop_strings_split_across_tokens_and_chunks(tokenizer, engine, sampler):
    """A stop string that starts inside one token and ends in the next, the first token the last of a decode
    chunk (tokens 1-4, 5-8, ... come in chunks of 4 after the prefill's token 0): the carried window finds it.
    The text is cut, and the completion ends, as the static sampler does it."""
    params = SamplingParams(max_new_tokens=MAX_NEW, stop_token_ids=())
    [[free]] = engine.generate([PROMPTS[0]], params)
    pieces = [tokenizer.decode(free.tokens[:i]) for i in range(len(free.tokens) + 1)]
    boundary = next(i for i in range(2, len(free.tokens)) if (i - 1) % engine.chunk_size == 0
                    and len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) - len(pieces[i]) >= 1
                    and free.text.find(free.text[len(pieces[i]) - 2:len(pieces[i]) + 1]) == len(pieces[i]) - 2)
    cut = len(pieces[boundary])
    stop = free.text[cut - 2:cut + 1]  # the last 2 characters of token boundary - 1 and the first of the next
    stopped_params = SamplingParams(max_new_tokens=MAX_NEW, stop_token_ids=(), stop_strings=("never-there", stop))
    [[stopped]] = engine.generate([PROMPTS[0]], stopped_params)
    assert stopped.finish_reason == "stop_string" and stopped.stop == stop
    assert stopped.text == free.text[:cut - 2]
    assert stopped.tokens == free.tokens[:boundary + 1]  # up to the token that completes the string
    assert_same([[stopped]], sampler.generate([PROMPTS[0]], stopped_params))


def test_scanned_layers_on_a_mesh_sample_what_one_device_samples(model, tokenizer, engine):
    """The same weights with stacked blocks (`scan_layers`, what full-scale configs use) on an fsdp x tensor mesh
    (the engine decodes on data 4 x tensor 2, its cache split over slots and heads): the same completions."""
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    scanned = create_sharded(lambda: CausalLM(model.config.replace(scan_layers=True), rngs=nnx.Rngs(1)), mesh)
    set_params(scanned, jax.device_put(relayout_layers(get_params(model), scan=True), param_shardings(scanned, mesh)))
    sharded = Engine(scanned, tokenizer, slots=4, max_len=32, chunk_size=4, prefill_rows=1, mesh=mesh,
                     tensor_parallel=2)  # one prompt per prefill: fewer programs to compile
    params = SamplingParams(max_new_tokens=10, n=3, stop_token_ids=(), seed=3, **SAMPLED)
    assert_same(sharded.generate(PROMPTS, params), engine.generate(PROMPTS, params), atol=1e-4)


# A few-shot-style header every prompt shares (tens of tokens), then the prompts of the other tests.
HEADER = "Question: Tom has 3 apples and buys 4 more. Answer: 7\nQuestion: "


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_a_shared_prefix_is_prefilled_once_and_changes_nothing(model, tokenizer, sampler, sampling):
    """Prompts that share a header: the header is prefilled once and each prompt's prefill covers only its own
    suffix. Completions are the static sampler's and those of the same engine without prefix caching; the
    slots are sized for the call (max_len=None)."""
    prompts = [HEADER + p for p in PROMPTS]
    ids = [tokenizer.encode(p, add_bos=True) for p in prompts]
    shared = common_prefix_length(ids)
    assert shared >= 16
    kwargs = dict(slots=4, chunk_size=4, prefill_rows=2, min_window=16)
    cached = Engine(model, tokenizer, min_prefix=16, **kwargs)
    plain = Engine(model, tokenizer, prefix_caching=False, **kwargs)
    params = SamplingParams(max_new_tokens=MAX_NEW, n=2, stop_token_ids=(), seed=6, **sampling)
    got = cached.generate(prompts, params)
    assert cached.stats["prefix_tokens"] == shared - shared % 16  # whole multiples of min_prefix
    prefilled = cached.stats["prefill_tokens"]
    want = plain.generate(prompts, params)
    assert "prefix_tokens" not in plain.stats
    assert prefilled < plain.stats["prefill_tokens"]
    assert_same(got, want)
    assert_same(got, sampler.generate(prompts, params))


def test_prefilling_on_a_shared_prefix_gives_the_separate_prefills_logits(model, tokenizer):
    """The prefill program itself: keys, values and last-position logits of prompts prefilled on top of their
    shared prefix's cache equal those of prompts prefilled whole."""
    engine = Engine(model, tokenizer, slots=2)
    ids = [tokenizer.encode(HEADER + p, add_bos=True) for p in PROMPTS[:2]]
    shared = common_prefix_length(ids)
    width = 64
    assert max(len(i) for i in ids) <= width and max(len(i) for i in ids) - shared <= 32
    whole = np.zeros((2, width), np.int32)
    suffix = np.zeros((2, 32), np.int32)
    for r, row in enumerate(ids):
        whole[r, :len(row)], suffix[r, :len(row) - shared] = row, row[shared:]
    lengths = np.asarray([len(i) for i in ids], np.int32)
    head = np.zeros((1, width), np.int32)
    head[0, :shared] = ids[0][:shared]
    pre_k, pre_v, _ = engine._prefill_fn(shared)(engine.params, head, np.int32([shared]), None, None)
    n = shared + 32
    k1, v1, logits1 = engine._prefill_fn(n)(engine.params, suffix, lengths - shared, pre_k, pre_v)
    k0, v0, logits0 = engine._prefill_fn(width)(engine.params, whole, lengths, None, None)
    np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), atol=2e-5)
    for r, length in enumerate(lengths):  # entries past a prompt's length are padding in both
        np.testing.assert_allclose(np.asarray(k1)[:, r, :, :length], np.asarray(k0)[:, r, :, :length], atol=2e-5)
        np.testing.assert_allclose(np.asarray(v1)[:, r, :, :length], np.asarray(v0)[:, r, :, :length], atol=2e-5)


def test_common_prefix_length_leaves_every_prompt_a_token():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([[1, 2, 9], [1, 5, 9]]) == 1


class _Pieces:
    """Token i decodes to PIECES[i]; 0xff stands for half of a two-byte character (shown as U+FFFD)."""

    PIECES = ["", "ab", "c", "d</", "an", "swer>", "xy", "\ufffd"]

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        text = "".join(self.PIECES[i] for i in ids)
        return text.replace("\ufffd\ufffd", "é")  # two halves make one character


def test_incremental_stop_search_reads_each_token_once_and_finds_split_strings():
    tok, stops = _Pieces(), ("</answer>", "zz")
    row = _Row(prompt=0, sample=0, budget=99, tokens=[], logprobs=[])
    found = []
    for new in ([1, 2], [7], [7, 3], [4], [5, 6]):  # "abc", half, "éd</", "an", "swer>xy"
        row.tokens.extend(new)
        found.append(scan_stop_strings(tok, row, stops))
    assert found == [None, None, None, None, ("</answer>", 7)]  # completed by token 6 ("swer>"), not 7
    assert row.tail == "bcéd</an"  # what the fourth call carried: the last len("</answer>") - 1 characters
    assert tok.decode(row.tokens[:7]).find("</answer>") == len("abcéd")
    # A waiting half character is read with the next tokens: the text seen equals the full decode.
    row = _Row(prompt=0, sample=0, budget=99, tokens=[1, 7], logprobs=[])
    assert scan_stop_strings(tok, row, ("é",)) is None and row.read_offset == 0
    row.tokens.append(7)
    assert scan_stop_strings(tok, row, ("é",)) == ("é", 3)


def test_an_abstract_engine_lowers_for_planning(model):
    """Built from an abstract model without a tokenizer (as compile-only plans build it), the engine lowers its
    programs: prefill, insert, the decode chunk and one decode step."""
    abstract = nnx.eval_shape(lambda: CausalLM(model.config, rngs=nnx.Rngs(0)))
    planned = Engine(abstract, None, slots=8, max_len=64)
    programs = planned.executables(20, SamplingParams(max_new_tokens=32, temperature=1.0, top_p=0.9))
    assert [name for name, _, _ in programs] == ["prefill", "insert", "decode", "decode_step"]
    for _, fn, args in programs:
        fn.lower(*args)


def test_clear_errors(model, tokenizer, engine):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[5, 6], []], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="prompt 0 has .* exceed the engine's max_len=32"):
        engine.generate([list(range(1, 30))], SamplingParams(max_new_tokens=8))
    with pytest.raises(ValueError, match="max_new_tokens has 1 entries for 2 prompts"):
        engine.generate(["a", "b"], SamplingParams(), max_new_tokens=[4])
    idle = Engine(model, tokenizer, slots=2, max_len=32)  # nothing compiles: it fails first
    idle.release_params()
    with pytest.raises(RuntimeError, match="no weights"):
        idle.generate(["a"], SamplingParams(max_new_tokens=2))
