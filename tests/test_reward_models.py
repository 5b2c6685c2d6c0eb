"""Reward models for RL: batch layout, ORM/PRM losses against numpy BCE, training on a synthetic task,
continual training that resumes bitwise, the replay buffer, Math-Shepherd labels, and `dsmath rm` end to end."""

import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsmath_jax.data.tokenizers import TokenizerMismatchError
from dsmath_jax.generate.sampler import Completion, Sampler, SamplingParams
from dsmath_jax.model import CausalLM, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.parallel.mesh import get_params
from dsmath_jax.rl.math_shepherd import label_steps, math_shepherd_labels, step_end_tokens
from dsmath_jax.rl.replay import ReplayBuffer, history_count, pack_examples, unpack_examples
from dsmath_jax.rl.reward_model import RewardModel, RewardModelError, batch_indices, orm_loss_fn, prm_loss_fn, rm_batch
from dsmath_jax.train.checkpoint import Checkpointer, CheckpointError
from dsmath_jax.train.step import TrainState, adamw

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _np_bce(s, y):
    p = 1.0 / (1.0 + np.exp(-s))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


# ------------------------------------------------------------------------------------------- batches
def _orm(tokens, prompt_len, label):
    return {"tokens": np.asarray(tokens, np.int32), "prompt_len": prompt_len, "label": label}


def _prm(tokens, prompt_len, ends, labels):
    return {"tokens": np.asarray(tokens, np.int32), "prompt_len": prompt_len,
            "step_ends": np.asarray(ends, np.int32), "step_labels": np.asarray(labels, np.float32)}


def test_rm_batch_layout_by_hand():
    exs = [_orm([5, 6, 7, 8], 2, 1.0), _orm([9, 10, 11, 12, 13, 14, 15], 3, 0.25)]
    b = rm_batch(exs, seq_len=6, pad_id=0, kind="orm")
    assert b["inputs"].tolist() == [[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]]  # unshifted, cut to 6
    assert b["segment_ids"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert b["weights"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert b["labels"].tolist() == [[1.0], [0.25]]
    assert int(b["truncated"]) == 1 and int(b["dropped_rows"]) == 0
    assert int(rm_batch([_orm([1, 2, 3, 4], 3, 0.0)], seq_len=3)["dropped_rows"]) == 1  # completion cut off

    exs = [_prm([1, 2, 3, 4, 5, 6], 2, [3, 5], [1.0, 0.0]), _prm([1, 2, 3, 4, 5, 6, 7, 8], 1, [2, 4, 7], [1, 0.5, 0])]
    b = rm_batch(exs, seq_len=7, kind="prm", max_steps=3)
    assert b["step_ends"].tolist() == [[3, 5, -1], [2, 4, -1]]  # step at 7 is past seq_len: dropped
    assert b["step_labels"].tolist() == [[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]]
    assert int(b["dropped_steps"]) == 1 and int(b["truncated"]) == 1
    b = rm_batch(exs, seq_len=8, kind="prm", max_steps=2)
    assert b["step_ends"].tolist() == [[3, 5], [2, 4]] and int(b["dropped_steps"]) == 1  # beyond max_steps


def test_bad_examples_are_named():
    with pytest.raises(RewardModelError, match=r"examples\[1\]: label=1.5"):
        rm_batch([_orm([1, 2], 1, 1.0), _orm([1, 2], 1, 1.5)], 4)
    with pytest.raises(RewardModelError, match=r"examples\[0\]: prompt_len=2"):
        rm_batch([_orm([1, 2], 2, 1.0)], 4)
    with pytest.raises(RewardModelError, match=r"step_ends \[1, 3\] must increase strictly within"):
        rm_batch([_prm([1, 2, 3], 2, [1, 3], [1, 1])], 4, kind="prm")
    with pytest.raises(RewardModelError, match=r"missing 'step_ends'"):
        rm_batch([_orm([1, 2], 1, 1.0)], 4, kind="prm")
    with pytest.raises(RewardModelError, match="kind must be one of"):
        rm_batch([_orm([1, 2], 1, 1.0)], 4, kind="vrm")


def test_batch_indices_are_epochs_of_seeded_permutations():
    got = np.concatenate([batch_indices(5, 3, seed=4, step=s) for s in range(4)])
    p0, p1, p2 = (np.random.default_rng([4, e]).permutation(5) for e in range(3))
    np.testing.assert_array_equal(got, np.concatenate([p0, p1, p2])[:12])
    assert all(sorted(got[i:i + 5]) == list(range(5)) for i in (0, 5))


# ------------------------------------------------------------------------------------------- losses
class FixedScores:
    """A stand-in model whose per-token scores are given: the losses see exactly these numbers."""

    def __init__(self, scores):
        self.scores = scores

    def __call__(self, inputs, positions=None, segment_ids=None):  # noqa: ARG002 - the model interface
        return self.scores


def test_orm_and_prm_losses_equal_numpy_bce():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 2, (4, 8)).astype(np.float32)
    exs = [_orm(np.arange(1, 7), 2, 1.0), _orm(np.arange(1, 9), 5, 0.0), _orm(np.arange(1, 4), 1, 0.3),
           _orm(np.arange(1, 10), 4, 0.7)]  # the last is cut at 8: scored at its token 7
    b = rm_batch(exs, 8)
    total, weight, m = orm_loss_fn()(FixedScores(jnp.asarray(scores)), b)
    s = scores[np.arange(4), [5, 7, 2, 7]]
    y = np.asarray([1.0, 0.0, 0.3, 0.7])
    np.testing.assert_allclose(float(total), _np_bce(s, y).sum(), rtol=1e-5)
    assert float(weight) == 4.0
    np.testing.assert_allclose(float(m["accuracy"]), np.mean((s > 0) == (y >= 0.5)), rtol=1e-6)
    np.testing.assert_allclose(float(m["mean_score"]), s.mean(), rtol=1e-5)

    exs = [_prm(np.arange(1, 9), 2, [3, 5, 7], [1.0, 0.5, 0.0]), _prm(np.arange(1, 7), 1, [2], [0.9]),
           _prm(np.arange(1, 9), 3, [4, 6], [0.0, 1.0])]
    b = rm_batch(exs, 8, kind="prm", max_steps=4)
    total, weight, m = prm_loss_fn()(FixedScores(jnp.asarray(scores[:3])), b)
    rows, cols = [0, 0, 0, 1, 2, 2], [3, 5, 7, 2, 4, 6]
    s, y = scores[rows, cols], np.asarray([1.0, 0.5, 0.0, 0.9, 0.0, 1.0])
    np.testing.assert_allclose(float(total), _np_bce(s, y).sum(), rtol=1e-5)
    assert float(weight) == 6.0
    np.testing.assert_allclose(float(m["accuracy"]), np.mean((s > 0) == (y >= 0.5)), rtol=1e-6)


def test_gradient_flows_only_to_the_scored_positions():
    scores = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6)), jnp.float32)
    orm = rm_batch([_orm([1, 2, 3], 1, 1.0), _orm([1, 2, 3, 4, 5, 6], 2, 0.0), _orm([4, 5], 1, 0.5)], 6)
    g = np.asarray(jax.grad(lambda x: orm_loss_fn()(FixedScores(x), orm)[0])(scores))
    expected = np.zeros((3, 6))
    for r, (c, y) in enumerate([(2, 1.0), (5, 0.0), (1, 0.5)]):  # d BCE / d s = sigmoid(s) - y
        expected[r, c] = 1 / (1 + np.exp(-float(scores[r, c]))) - y
    np.testing.assert_allclose(g, expected, atol=1e-6)
    prm = rm_batch([_prm([1, 2, 3, 4, 5], 1, [2, 4], [1.0, 0.0])], 6, kind="prm", max_steps=3)
    g = np.asarray(jax.grad(lambda x: prm_loss_fn()(FixedScores(x), prm)[0])(scores[:1]))
    assert np.flatnonzero(g[0]).tolist() == [2, 4]


# ------------------------------------------------------------------------------------------- training
def _synthetic(n, kind, seed):
    """Completions of 6 random tokens; the label says whether token 7 has appeared (a PRM's step k ends
    after completion token 2k+1 and asks it of the prefix so far)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        comp = rng.integers(6, 16, size=6)
        seen = np.cumsum(comp == 7) > 0
        ex = {"tokens": np.asarray([2, 4, 5] + comp.tolist(), np.int32), "prompt_len": 3,
              "label": np.float32(seen[-1])}
        if kind == "prm":
            ex.update(step_ends=np.asarray([4, 6, 8], np.int32), step_labels=seen[[1, 3, 5]].astype(np.float32))
        out.append(ex)
    return out


@pytest.fixture(scope="module")
def small_lm():
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    cfg = get_preset("tiny", vocab_size=128, max_seq_len=128, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64)
    return create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh), mesh


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_a_reward_model_learns_to_separate_good_from_bad(small_lm, kind):
    lm, mesh = small_lm
    before = jax.tree.map(np.asarray, get_params(lm))
    rm = RewardModel.init_from_lm(lm, kind, mesh, seed=1, seq_len=12, max_steps=4)
    train, test = _synthetic(512, kind, 0), _synthetic(128, kind, 1)
    start = rm.evaluate(test)
    trainer = rm.make_trainer(adamw(3e-3, weight_decay=0.0))
    metrics = trainer.train(train, 30, 32, seed=0)
    after = rm.evaluate(test)
    assert trainer.step == 30 and metrics["skipped_steps"] == 0
    assert start["accuracy"] < 0.7 and after["accuracy"] >= 0.9, (start, after)
    assert after["loss"] < 0.5 * start["loss"]
    assert after["items"] == (128 if kind == "orm" else 384)
    # The held-out numbers are a numpy BCE / accuracy of the read-outs.
    b = rm.batch(test)
    s, valid = (np.asarray(rm.outcome(b)), None) if kind == "orm" else map(np.asarray, rm.steps(b))
    y = b["labels"][:, 0] if kind == "orm" else b["step_labels"]
    s, y = (s, y) if valid is None else (s[valid], y[valid])
    np.testing.assert_allclose(after["loss"], _np_bce(s.astype(np.float64), y).mean(), rtol=1e-5)
    # Training the RM (whose buffers are donated every step) left the language model it came from intact.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, get_params(lm)), before)


def test_read_outs_on_completions_match_the_training_layout(small_lm):
    lm, mesh = small_lm
    rm = RewardModel.init_from_lm(lm, "prm", mesh, seed=2, seq_len=10, max_steps=3)
    prompts, comps = [[2, 4], [2, 4, 5]], [[8, 9, 10], [11, 12, 13, 14, 15, 6, 7, 8]]
    full = rm.scores({"inputs": np.asarray([[2, 4, 8, 9, 10] + [0] * 5, [2, 4, 5, 11, 12, 13, 14, 15, 6, 7]]),
                      "segment_ids": np.asarray([[1] * 5 + [0] * 5, [1] * 10])})
    full = np.asarray(full)
    got = rm.score_steps(prompts, comps, np.asarray([[0, 2, -1], [1, 6, 7]]))  # 7 + 3 = 10 is past seq_len
    np.testing.assert_allclose(got, [[full[0, 2], full[0, 4], 0], [full[1, 4], full[1, 9], 0]], rtol=1e-6)
    np.testing.assert_allclose(rm.score_outcomes(prompts, comps), [full[0, 4], full[1, 9]], rtol=1e-6)
    with pytest.raises(RewardModelError, match="beyond the reward model's vocabulary"):
        rm.scores({"inputs": np.asarray([[1, 400]])})


def test_continual_training_is_exactly_reproducible_and_resumes_bitwise(small_lm, tmp_path):
    lm, mesh = small_lm
    examples = _synthetic(40, "orm", 3)
    rm = RewardModel.init_from_lm(lm, "orm", mesh, seed=1, seq_len=12)
    trainer = rm.make_trainer(adamw(1e-3, weight_decay=0.0))
    initial = jax.tree.map(np.asarray, trainer.state)  # host copies: the state is donated at every update

    def params():
        return jax.tree.map(np.asarray, trainer.state.params)

    trainer.train(examples, 6, 8, seed=5)
    whole = params()
    trainer.set_state(initial)
    trainer.train(examples, 3, 8, seed=5)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, {"params": trainer.state.params, "opt_state": trainer.state.opt_state})
    trainer.set_state(initial)  # forget, then resume from the checkpoint as a new process would
    target = trainer.abstract_state()
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        got = ckpt.restore(3, {"params": target.params, "opt_state": target.opt_state})
    trainer.set_state(TrainState(step=3, params=got["params"], opt_state=got["opt_state"]))
    trainer.train(examples, 3, 8, seed=5, start=3)
    assert trainer.step == 6
    jax.tree.map(np.testing.assert_array_equal, params(), whole)
    assert rm.params is trainer.state.params  # the reward model scores with the trained params
    trainer.set_state(initial)
    trainer.train(examples, 6, 8, seed=6)  # another seed: other batches, other params
    assert not np.array_equal(params()["head"], whole["head"])
    # A reward model restored abstractly (as `RewardModel.load` does) scores like the trained one.
    trainer.set_state(TrainState(step=6, params=whole, opt_state=initial.opt_state))
    fresh = RewardModel.abstract(lm.config, "orm", mesh, seq_len=12)
    fresh.params = whole
    b = rm.batch(examples[:5])
    np.testing.assert_array_equal(np.asarray(fresh.outcome(b)), np.asarray(rm.outcome(b)))


def test_load_errors_name_what_is_missing(small_lm, tmp_path):
    lm, mesh = small_lm
    with pytest.raises(CheckpointError, match="no checkpoints/"):
        RewardModel.load(str(tmp_path), mesh)

    class BigTokenizer:
        vocab_size, bos_id, eos_id, pad_id, path = 1000, None, 3, 0, "big.model"

    with pytest.raises(TokenizerMismatchError, match="reward model"):
        RewardModel.init_from_lm(lm, "orm", mesh, tokenizer=BigTokenizer())


# ------------------------------------------------------------------------------------------- replay
def _ex(i, n=None):
    n = i % 4 if n is None else n
    return {"tokens": np.arange(i, i + n, dtype=np.int32), "prompt_len": np.int32(1), "label": np.float32(i / 10)}


def test_replay_mixes_the_stated_fraction_of_history():
    assert history_count(90, 1000, 0.1) == 10 and history_count(30, 1000, 0.25) == 10
    assert history_count(90, 4, 0.1) == 4 and history_count(0, 50, 0.1) == 0
    buf = ReplayBuffer(capacity=100, history_fraction=0.1, seed=7)
    buf.add_pending([_ex(i) for i in range(50)])
    assert len(buf.training_set()) == 50  # no history yet
    buf.commit()
    buf.add_pending([_ex(100 + i) for i in range(90)])
    got = buf.training_set()
    assert len(got) == 100 and len(got[90:]) == 10  # 10% of the result is history
    assert all(ex["label"] < 5.0 for ex in got[90:]) and got[:90] == buf.pending
    expected = np.random.default_rng([7, 1]).choice(50, size=10, replace=False)
    assert [float(ex["label"]) for ex in got[90:]] == [float(np.float32(i / 10)) for i in expected]
    assert buf.history_sample() == expected.tolist()  # the same draw however often it is asked
    again = ReplayBuffer(capacity=100, history_fraction=0.1, seed=7)
    again.add_pending([_ex(i) for i in range(50)])
    again.commit()
    again.add_pending([_ex(100 + i) for i in range(90)])
    assert again.history_sample() == buf.history_sample()


def test_replay_history_is_first_in_first_out():
    buf = ReplayBuffer(capacity=5, history_fraction=0.5)
    buf.add_pending([_ex(i) for i in range(4)])
    buf.commit()
    buf.add_pending([_ex(i) for i in range(4, 7)])
    buf.commit()
    assert [float(ex["label"]) for ex in buf.history] == [float(np.float32(i / 10)) for i in range(2, 7)]
    assert buf.pending == [] and buf.commits == 2
    with pytest.raises(ValueError, match="fields"):
        buf.add_pending([{"tokens": np.arange(3), "label": 1.0}])


def _assert_same_buffer(a, b):
    assert (a.capacity, a.history_fraction, a.seed, a.commits) == (b.capacity, b.history_fraction, b.seed, b.commits)
    for x, y in ((a.pending, b.pending), (a.history, b.history)):
        assert len(x) == len(y)
        for ex, ey in zip(x, y):
            assert sorted(ex) == sorted(ey)
            for k in ex:
                assert np.asarray(ex[k]).dtype == np.asarray(ey[k]).dtype, k
                assert np.asarray(ex[k]).tobytes() == np.asarray(ey[k]).tobytes(), k


def test_replay_state_round_trips_bitwise_through_a_checkpoint(tmp_path):
    buf = ReplayBuffer(capacity=6, history_fraction=0.2, seed=3)
    buf.add_pending([_ex(i) for i in range(5)] + [_ex(9, n=0)])  # an empty token array too
    buf.commit()
    buf.add_pending([_ex(20 + i) for i in range(4)])
    _assert_same_buffer(buf, ReplayBuffer.from_arrays(buf.state_arrays()))
    empty_pending = ReplayBuffer(capacity=6, seed=1)
    empty_pending.add_pending([_ex(1), _ex(2)])
    empty_pending.commit()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, {"replay": buf.state_arrays(), "other": empty_pending.state_arrays(),
                      "empty": ReplayBuffer(3).state_arrays()})
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        got = ckpt.restore(1)  # no targets: every item as saved
    restored = ReplayBuffer.from_arrays(got["replay"])
    _assert_same_buffer(buf, restored)
    assert [x["label"] for x in restored.training_set()] == [x["label"] for x in buf.training_set()]
    _assert_same_buffer(empty_pending, ReplayBuffer.from_arrays(got["other"]))
    _assert_same_buffer(ReplayBuffer(3), ReplayBuffer.from_arrays(got["empty"]))
    smaller = ReplayBuffer.from_arrays(got["replay"], capacity=2)
    assert smaller.capacity == 2 and [x["label"] for x in smaller.history] == [x["label"] for x in buf.history[-2:]]
    # The packing used for labels.npz as well.
    packed = pack_examples(buf.history)
    assert packed["tokens.offsets"].tolist() == [0, 0, 1, 3, 6, 6, 6]
    assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(unpack_examples(packed), buf.history))


# ------------------------------------------------------------------------------------------- Math-Shepherd
class CharTokenizer:
    """One token per character (ids = code points), eos 3: character offsets are token indices."""

    bos_id, eos_id, pad_id, vocab_size, path = None, 3, 0, 128, None

    def encode(self, text, add_bos=False, add_eos=False):  # noqa: ARG002 - the tokenizer interface
        return [ord(c) for c in text] + ([3] if add_eos else [])

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        return "".join(chr(i) for i in ids if i >= 32 or i == 10)


class PieceTokenizer:
    """Fixed multi-character pieces (a newline can share a token with text); id 0 is eos."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        return "".join(self.pieces[i] for i in ids if i != 0)


class ScriptedSampler:
    """A sampler whose continuations of each prefix (by its decoded text) are written out in advance."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    def generate(self, prompts, params):
        self.calls.append(([list(p) for p in prompts], params))
        out = []
        for i, ids in enumerate(prompts):
            texts = self.script[self.tokenizer.decode(ids)]
            assert len(texts) == params.n
            out.append([Completion(i, j, self.tokenizer.encode(t, add_eos=True), [0.0] * (len(t) + 1), t,
                                   "stop_token", 3) for j, t in enumerate(texts)])
        return out


def test_step_ends_are_the_tokens_holding_the_newlines():
    tok = CharTokenizer()
    split = step_end_tokens(tok, tok.encode("x=1\ny=2\n\\boxed{3}", add_eos=True))
    assert split.ends == (3, 7, 17) and split.spans == ((0, 3), (4, 7), (8, 17))
    # Pieces: a newline inside a token with text; two lines ending in one token are joined into one step.
    pieces = ["</s>", "a=1", ".\n", "b", "=2\nc", "=3", "\n", "end"]
    split = step_end_tokens(PieceTokenizer(pieces), [1, 2, 3, 4, 5, 6, 7, 0])
    assert split.text == "a=1.\nb=2\nc=3\nend" and split.ends == (1, 3, 5, 7) and split.merged == 0
    split = step_end_tokens(PieceTokenizer(["</s>", "a=1", "\nb\n", "end"]), [1, 2, 3, 0])
    assert split.ends == (1, 3) and split.merged == 1 and split.spans == ((0, 5), (6, 9))
    assert step_end_tokens(tok, []).ends == ()
    assert label_steps(np.asarray([[1, 0, 0, 1], [0, 0, 0, 0]], bool), "soft").tolist() == [0.5, 0.0]


@pytest.fixture(scope="module")
def grader():
    from dsmath_jax.evals.grader import Grader
    with Grader(max_workers=1) as g:
        yield g


@pytest.mark.xdist_group("sandbox")
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_math_shepherd_labels_by_hand(grader, mode):
    tok = CharTokenizer()
    prompt = tok.encode("Q?\n")
    a = tok.encode("x=1\ny=2\n\\boxed{3}", add_eos=True)  # right; steps end at tokens 3, 7 and 17 (eos)
    b = tok.encode("x=2\n\n  \nwrong \\boxed{9}")  # wrong, cut at the length limit; a blank line is no step
    script = {"Q?\nx=1\n": ["y=2\n\\boxed{3}", "y=5\n\\boxed{6}", "\\boxed{4}", "So \\boxed{3}."],
              "Q?\nx=1\ny=2\n": ["\\boxed{5}", "\\boxed{6}", "\\boxed{7}", "\\boxed{8}"],
              "Q?\nx=2\n": ["\\boxed{3}"] * 4}
    sampler = ScriptedSampler(tok, script)
    import collections
    stats = collections.Counter()
    out = math_shepherd_labels(sampler, grader, [prompt, prompt], [a, b], ["3", "3"], "number", tok, n=4,
                               mode=mode, sampling=SamplingParams(max_new_tokens=20, temperature=0.5, n=1),
                               stats=stats)
    (prefixes, params), = sampler.calls  # one sampling call for every prefix of every completion
    assert prefixes == [prompt + a[:4], prompt + a[:8], prompt + b[:4]]
    assert params.n == 4 and params.temperature == 0.5 and params.max_new_tokens == 20
    assert [ex["step_ends"].tolist() for ex in out] == [[6, 10, 20], [6, 3 + len(b) - 1]]
    want = {"hard": [[1.0, 0.0, 1.0], [1.0, 0.0]], "soft": [[0.5, 0.0, 1.0], [1.0, 0.0]]}[mode]
    assert [ex["step_labels"].tolist() for ex in out] == want
    assert [float(ex["label"]) for ex in out] == [1.0, 0.0]
    assert out[0]["tokens"].tolist() == prompt + a and out[0]["prompt_len"] == 3
    assert stats["prefixes"] == 3 and stats["continuations"] == 12 and stats["continuations_correct"] == 6
    rm_batch(out, 40, kind="prm")  # valid PRM examples


@pytest.mark.xdist_group("sandbox")
def test_math_shepherd_with_a_real_sampler_and_grader(grader, small_lm):
    tok = CharTokenizer()
    model, _ = small_lm

    class Recording(Sampler):
        def generate(self, prompts, params=SamplingParams(), **kw):  # noqa: B008 - Sampler.generate's default
            self.seen = [list(p) for p in prompts]
            return super().generate(prompts, params, **kw)

    sampler = Recording(model, tok, batch_size=8)
    prompts = [tok.encode("Q: 1+2?\n"), tok.encode("Q: 2*2?\n")]
    comps = [tok.encode("1+2=3\nso\n\\boxed{3}", add_eos=True), tok.encode("2*2=5\n\\boxed{5}", add_eos=True)]
    out = math_shepherd_labels(sampler, grader, prompts, comps, ["3", "4"], ["number", "number"], tok, n=2,
                               mode="soft", sampling=SamplingParams(max_new_tokens=6, temperature=1.0, seed=3))
    assert len(out) == 2 and [len(ex["step_ends"]) for ex in out] == [3, 2]
    for ex, prompt, comp in zip(out, prompts, comps):
        assert ex["tokens"].tolist() == prompt + comp and ex["step_labels"].dtype == np.float32
        assert np.all((ex["step_labels"] >= 0) & (ex["step_labels"] <= 1))
        assert ex["step_ends"][-1] == len(ex["tokens"]) - 1
    assert [float(ex["step_labels"][-1]) for ex in out] == [1.0, 0.0]  # the answer line: own correctness
    ends = [e - len(p) for ex, p in zip(out, prompts) for e in ex["step_ends"][:-1]]
    owners = [0, 0, 1]
    assert sampler.seen == [prompts[i] + comps[i][:e + 1] for i, e in zip(owners, ends)]
    assert [tok.decode(s)[-1] for s in sampler.seen] == ["\n"] * 3  # every prefix ends with its step's newline


# ------------------------------------------------------------------------------------------- dsmath rm
def _load_config(path, arg):
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(arg)


def test_rm_configs_build():
    from dsmath_jax.cli import COMMANDS
    assert COMMANDS["rm"][0] == "dsmath_jax.commands.rm:main"
    for path, kind, args in (("rm/orm.py", "orm", [None, "tiny"]),
                             ("rm/prm_math_shepherd.py", "prm", [None, "tiny", "soft", "soft,tiny"])):
        for arg in args:
            module, c = _load_config(path, arg)
            assert "Launch" in module.__doc__ and "PAPER.md" in module.__doc__
            assert c.kind == kind and c.labels.mode in (("outcome",) if kind == "orm" else ("hard", "soft"))
            if arg and "tiny" in arg:
                assert c.init.rm_init_dir is None and c.data.problems[0]["kind"] == "arithmetic"
            else:
                assert c.optimizer.schedule.peak == 2e-5  # PAPER.md §4.2: the reward model's learning rate
                assert {p["kind"] for p in c.data.problems} == {"gsm8k", "math"}
        with pytest.raises(ValueError, match="unknown config argument"):
            module.get_config("nonsense")
    assert _load_config("rm/prm_math_shepherd.py", "soft")[1].labels.mode == "soft"
    from dsmath_jax.commands.rm import run
    _, c = _load_config("rm/orm.py", "tiny")
    with pytest.raises(ValueError, match="init.run_dir is required"):
        run(c, "unused")
    c.labels.mode = "hard"
    with pytest.raises(ValueError, match=r"labels.mode='hard': an ORM is labelled with one of \('outcome',\)"):
        run(c, "unused")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny SFT policy on the arithmetic task (a few dozen steps: it need not be good)."""
    from dsmath_jax.train.loop import train
    _, c = _load_config("sft/deepseekmath_instruct.py", "tiny")
    c.data.sources = [{"kind": "sft", "name": "arith_sft", "weight": 1.0, "sources": [
        {"kind": "arithmetic", "arithmetic": {"n_train": 2000, "n_test": 64, "seed": 0}}]}]
    c.data.update(seq_len=128, eval_split=None)
    c.model.max_seq_len = 256
    c.tokenizer.train_docs = 2000
    c.train.update(steps=40, batch_size=16, eval_every=0, checkpoint_every=1000, tensorboard=False)
    work = tmp_path_factory.mktemp("sft")
    assert train(c, str(work), task="sft")["status"] == "completed"
    return work


@pytest.mark.xdist_group("sandbox")
def test_dsmath_rm_end_to_end_and_rerun(sft_run, tmp_path):
    from dsmath_jax.commands.rm import load_labels, main
    from dsmath_jax.train.metrics import read_metrics
    work = tmp_path / "prm"
    argv = [f"--config={ROOT / 'configs/rm/prm_math_shepherd.py'}:tiny", f"--workdir={work}",
            f"--config.init.run_dir={sft_run}", "--config.data.limit_per_source=10",
            "--config.sampling.samples_per_problem=2", "--config.sampling.max_new_tokens=40",
            "--config.labels.n=2", "--config.labels.max_new_tokens=24", "--config.train.steps=6",
            "--config.train.batch_size=8", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
            "--config.train.log_every=3", "--config.train.tensorboard=False", "--config.data.seq_len=128"]
    assert main(argv) == 0
    summary = json.loads((work / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 6 and summary["kind"] == "prm"
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [3, 6]
    examples, validation, stats = load_labels(str(work / "labels.npz"))
    assert len(examples) == 20 == stats["completions"]  # 10 problems x 2 samples
    assert summary["train_examples"] + summary["validation_examples"] == 20
    assert validation.sum() == 4  # round(0.25 * 10) problems, 2 samples each
    by_problem = {}
    for ex, v in zip(examples, validation):
        by_problem.setdefault(int(ex["problem"]), set()).add(bool(v))
    assert all(len(sides) == 1 for sides in by_problem.values())  # a problem's samples stay on one side
    for ex in examples:
        assert ex["step_ends"][-1] == len(ex["tokens"]) - 1 and ex["step_labels"][-1] == ex["label"]
        assert np.all((ex["step_labels"] >= 0) & (ex["step_labels"] <= 1))
    assert stats["prefixes"] == sum(len(ex["step_ends"]) - 1 for ex in examples)
    records = read_metrics(str(work / "metrics.jsonl"))
    assert [r["step"] for r in records if "loss" in r] == [3, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    assert (work / "tokenizer.model").exists() and json.loads((work / "config.json").read_text())["kind"] == "prm"

    # The trained reward model loads from the run directory and scores as it did at the end of the run.
    rm = RewardModel.load(str(work), make_mesh())
    assert rm.kind == "prm" and rm.tokenizer is not None and rm.seq_len == 128
    held_out = [ex for ex, v in zip(examples, validation) if v]
    again = rm.evaluate(held_out)
    for key in ("loss", "accuracy", "mean_score", "items"):
        np.testing.assert_allclose(again[key], summary["eval"][f"eval_{key}"], rtol=1e-5)
    rewards, mask = rm.steps(rm.batch(held_out))
    assert rewards.shape == (4, rm.max_steps) and bool(np.all(np.isfinite(np.asarray(rewards))))

    # Running it again resumes: the labels are reused and there is nothing left to train.
    label_time = os.path.getmtime(work / "labels.npz")
    assert main(argv) == 0
    assert os.path.getmtime(work / "labels.npz") == label_time
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [3, 6]
    rerun = json.loads((work / "summary.json").read_text())
    assert rerun["step"] == 6 and rerun["eval"] == summary["eval"]
    assert len(read_metrics(str(work / "metrics.jsonl"))) == len(records)
    # An unknown config key is an error, naming it.
    assert main(argv + ["--config.train.nonsense=1"]) == 2


@pytest.mark.xdist_group("sandbox")
def test_dsmath_rm_outcome_model(sft_run, tmp_path):
    from dsmath_jax.commands.rm import load_labels, main
    work = tmp_path / "orm"
    assert main([f"--config={ROOT / 'configs/rm/orm.py'}:tiny", f"--workdir={work}", f"--config.init.run_dir={sft_run}",
                 "--config.data.limit_per_source=6", "--config.sampling.samples_per_problem=2",
                 "--config.sampling.max_new_tokens=40", "--config.train.steps=2", "--config.train.batch_size=8",
                 "--config.train.eval_every=0", "--config.train.checkpoint_every=2",
                 "--config.data.validation_fraction=0.0", "--config.train.tensorboard=False",
                 "--config.data.seq_len=128"]) == 0
    summary = json.loads((work / "summary.json").read_text())
    examples, validation, stats = load_labels(str(work / "labels.npz"))
    assert summary["step"] == 2 and summary["kind"] == "orm" and len(examples) == 12 and not validation.any()
    assert summary["eval"] == {} and summary["train"]["items"] == 8
    assert {float(ex["label"]) for ex in examples} <= {0.0, 1.0}
    assert stats["policy_accuracy"] == np.mean([float(ex["label"]) for ex in examples])
    assert RewardModel.load(str(work), make_mesh()).kind == "orm"
