"""The roles of the RL loop, each checked on its own with hand-worked numbers: the rollout role (rewards as
callables, their weighted sum, process rewards from the step checker, dynamic sampling, question order) and
the method registry (Table 10: data source, batch, loss)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CharTokenizer
from flax import nnx

from dsmath_jax.config.rl import METHODS, base_rl_config
from dsmath_jax.data.tasks import Problem
from dsmath_jax.evals.grader import Verdict
from dsmath_jax.generate.sampler import Completion
from dsmath_jax.model import CausalLM, get_preset
from dsmath_jax.rl.losses import PolicyLossConfig
from dsmath_jax.rl.math_shepherd import step_end_tokens
from dsmath_jax.rl.methods import METHOD_REGISTRY, BatchSettings, LossSettings, bucket_length, fit_length, get_method
from dsmath_jax.rl.rollout import (
    Reward,
    Roller,
    Rollout,
    RolloutSettings,
    Rows,
    outcome_rewards,
    question_indices,
    step_rule_rewards,
)


class ExactGrader:
    """Correct when the completion's last line equals the gold answer."""

    def grade(self, items):
        return [Verdict(text.strip().split("\n")[-1], text.strip().split("\n")[-1] == gold) for text, gold, _ in items]


class ScriptedSampler:
    """Returns, for prompt ids [q], the texts `script[q]` in turn (one per sample)."""

    pad_id = 0

    def __init__(self, script):
        self.script, self.calls, self.params = script, [], None

    def update_params(self, params):
        self.params = params

    def release_params(self):
        self.params = None

    def generate(self, prompt_ids, sampling):
        self.calls.append(([p[0] for p in prompt_ids], sampling))
        out = []
        for i, ids in enumerate(prompt_ids):
            texts = self.script[ids[0]]
            out.append([Completion(i, j, [ord(ch) for ch in texts[j]], [-0.5] * len(texts[j]), texts[j], "stop")
                        for j in range(sampling.n)])
        return out


def _comp(text, finish="stop"):
    return Completion(0, 0, [ord(ch) for ch in text], [-0.1] * len(text), text, finish)


def test_the_registry_is_table_10():
    assert tuple(METHOD_REGISTRY) == METHODS
    sources = {m.name: m.source for m in METHOD_REGISTRY.values()}
    assert sources == {"sft": "gold", "rft": "initial", "online_rft": "policy", "dpo": "initial", "ppo": "policy",
                       "grpo": "policy"}
    loss = PolicyLossConfig(beta=0.04)
    assert [m.name for m in METHOD_REGISTRY.values() if m.uses_reference(loss)] == ["dpo", "ppo", "grpo"]
    assert not get_method("grpo").uses_reference(dataclasses.replace(loss, beta=0.0))
    assert get_method("ppo").loss_config(loss).beta == 0.0  # PPO's KL is in the reward
    assert get_method("grpo").loss_config(loss).beta == 0.04
    assert [m.name for m in METHOD_REGISTRY.values() if m.process] == ["grpo"]
    assert [m.name for m in METHOD_REGISTRY.values() if m.critic] == ["ppo"]
    with pytest.raises(ValueError, match="is not one of"):
        get_method("reinforce")


def _reward_config(**kw):
    c = base_rl_config().reward
    c.update(kw)
    return c


def test_outcome_rewards_are_the_configured_terms_in_order():
    names = lambda c: [(r.name, r.weight) for r in outcome_rewards(c, 16, reward_model=object())]  # noqa: E731
    assert names(_reward_config()) == [("rule", 1.0)]
    assert names(_reward_config(format_weight=0.5, overlong_buffer=4, overlong_weight=2.0)) == [
        ("rule", 1.0), ("format", 0.5), ("overlong", 2.0)]
    assert names(_reward_config(kind="orm", rule_weight=0.0)) == [("orm", 1.0)]
    assert names(_reward_config(kind="orm", rule_weight=0.5, rm_weight=2.0)) == [("rule", 0.5), ("orm", 2.0)]
    with pytest.raises(ValueError, match="needs a reward model"):
        outcome_rewards(_reward_config(kind="orm"), 16)
    with pytest.raises(ValueError, match="nonzero weight"):
        outcome_rewards(_reward_config(kind="orm", rule_weight=0.0, rm_weight=0.0), 16, reward_model=object())


def test_rewards_are_callables_on_rows_and_sum_with_their_weights():
    problems = [Problem("a", "q", "7"), Problem("b", "q", "3")]
    groups = [["x\n7", "x\n8"], ["\\boxed{3}\n3", "3"]]
    rows = Rows.of_groups(problems, [[1], [2]], [[_comp(t) for t in g] for g in groups],
                          np.asarray([1, 0, 1, 1], np.float32))
    c = _reward_config(format_weight=0.5, overlong_buffer=2, overlong_weight=1.0)
    terms = {r.name: r for r in outcome_rewards(c, max_new_tokens=4)}
    np.testing.assert_array_equal(terms["rule"].fn(rows), [1, 0, 1, 1])
    np.testing.assert_array_equal(terms["format"].fn(rows), [0, 0, 0, 0])  # no row ends with a boxed answer
    # DAPO: lengths 3, 3, 11, 1 against max 4 with buffer 2: (4 - 2 - 3) / 2 = -0.5 twice, -1 beyond 4, 0.
    np.testing.assert_allclose(terms["overlong"].fn(rows), [-0.5, -0.5, -1.0, 0.0])
    sampler = ScriptedSampler({})
    roller = Roller(sampler, ExactGrader(), problems, [[1], [2]], RolloutSettings(2, 2, 4, 64),
                    rewards=[*terms.values(), Reward("bonus", 2.0, lambda r: np.arange(len(r.completions)))])
    scored = roller.score(problems, [[1], [2]], [[_comp(t) for t in g] for g in groups])
    np.testing.assert_allclose(scored["rewards"], [1 - 0.5 + 0, 0 - 0.5 + 2, 1 - 1 + 4, 1 + 0 + 6])
    assert sorted(scored) == ["correct", "reward_bonus", "reward_format", "reward_overlong", "reward_rule",
                              "rewards"]


def test_step_rule_rewards_check_each_step_and_give_the_outcome_to_the_rest():
    p = Problem("p", "2 + 3 * 4", "14", kind="number", intermediates=(12, 14))
    text = "3 * 4 = 12\n2 + 12 = 15\nso\n\\boxed{15}"
    tok = CharTokenizer()
    roller = Roller(ScriptedSampler({}), ExactGrader(), [p], [[1, 2]], RolloutSettings(1, 1, 64, 20),
                    rewards=[], step_reward=step_rule_rewards, tokenizer=tok)
    rows = Rows([p], [[1, 2]], [_comp(text)], np.asarray([0.0], np.float32))
    steps = [step_end_tokens(tok, [ord(ch) for ch in text])]
    out = roller._step_rewards(rows, steps)
    # A step ends at the newline after its line (characters 10, 22, 25; one token per character), the last at
    # the last token (35); the target position of completion token e is len(prompt) - 1 + e = 1 + e, and
    # positions >= seq_len 20 are dropped.
    np.testing.assert_array_equal(out["step_ends"], [[11, -1, -1, -1]])
    np.testing.assert_array_equal(out["step_rewards"], [[1.0, 0.0, 0.0, 0.0]])
    roller.settings = dataclasses.replace(roller.settings, seq_len=64)
    out = roller._step_rewards(rows, steps)
    np.testing.assert_array_equal(out["step_ends"], [[11, 23, 26, 36]])
    # 12 right, 15 wrong, "so" has no result (wrong), the answer line takes the outcome (wrong).
    np.testing.assert_array_equal(out["step_rewards"], [[1.0, 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="needs problems with step results"):
        step_rule_rewards(Rows([Problem("q", "x", "1")], [[1]], [_comp("1")], np.ones(1, np.float32)),
                          [step_end_tokens(tok, [ord("1")])])


def test_question_order_is_a_pure_function_of_the_position():
    first = question_indices(5, 3, 0, 12)
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:10]) == list(range(5))  # epochs are permutations
    assert first[:5] != first[5:10]  # each epoch its own permutation
    assert question_indices(5, 3, 7, 5) == first[7:12]  # from any position
    assert question_indices(5, 4, 0, 5) != first[:5]  # the data seed decides


def test_dynamic_sampling_replaces_groups_without_signal_and_fills_with_inert_ones():
    problems = [Problem(str(i), "q", "1") for i in range(4)]
    script = {0: ["1", "1"], 1: ["1", "2"], 2: ["2", "2"], 3: ["2", "1"]}  # 0, 2: all equal; 1, 3: varied
    sampler = ScriptedSampler(script)
    settings = RolloutSettings(group_size=2, questions=3, max_new_tokens=8, seq_len=16, seed=5, data_seed=0,
                               dynamic_sampling=True, max_rounds=2)
    roller = Roller(sampler, ExactGrader(), problems, [[i] for i in range(4)], settings,
                    rewards=[Reward("rule", 1.0, lambda r: r.correct)])
    order = question_indices(4, 0, 0, 8)
    ro, position = roller.sample("params", step=1, position=0)
    asked = [q for qs, _ in sampler.calls for q in qs]
    assert asked[:3] == order[:3]  # round 1: three questions; round 2: as many as were dropped
    varied = [q for q in asked if q in (1, 3)]
    inert = [q for q in asked if q in (0, 2)]
    trained = [p for p, k in zip(ro.problems, ro.keep) if k]
    assert [p.id for p in trained] == [str(q) for q in varied][:3]
    assert len(ro.problems) == 3 and ro.keep.sum() == min(3, len(varied))
    assert [p.id for p, k in zip(ro.problems, ro.keep) if not k] == [str(q) for q in inert][:3 - len(trained)]
    assert position == len(asked) and ro.sampled_rows == 2 * len(asked)
    assert [s.seed for _, s in sampler.calls] == [roller.sampling(1, r, 2).seed for r in range(len(sampler.calls))]
    assert sampler.params is None  # the weights are released after sampling
    again, _ = Roller(ScriptedSampler(script), ExactGrader(), problems, [[i] for i in range(4)], settings,
                      rewards=[Reward("rule", 1.0, lambda r: r.correct)]).sample("params", step=1, position=0)
    assert [p.id for p in again.problems] == [p.id for p in ro.problems]


def _rollout(correct, G, keep=None):
    Q = len(correct) // G
    comps = [[_comp("ab"[i % 2] * (1 + i)) for i in range(G)] for _ in range(Q)]
    c = np.asarray(correct, np.float32)
    return Rollout([Problem(str(q), "q", "1") for q in range(Q)], [[7, 8] for _ in range(Q)], comps, c, c,
                   np.ones(Q, bool) if keep is None else np.asarray(keep))


def test_grpo_batch_normalises_rewards_within_groups():
    ro = _rollout([1, 0, 0, 0, 1, 1, 0, 1], G=4)
    b = get_method("grpo").build_batch(ro, BatchSettings(seq_len=8, pad_id=0, group_size=4))
    r = ro.rewards.reshape(2, 4)
    want = ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(b["advantages"], want[:, None] * b["weights"], rtol=1e-5, atol=1e-6)
    assert b["weights"].sum(1).tolist() == [1, 2, 3, 4, 1, 2, 3, 4]  # completions of 1..4 tokens
    unscaled = get_method("grpo").build_batch(ro, BatchSettings(8, 0, 4, scale_advantages=False))
    np.testing.assert_allclose(unscaled["advantages"][:, 1], (r - r.mean(1, keepdims=True)).reshape(-1) *
                               (b["weights"][:, 1] > 0), atol=1e-6)


def test_rft_trains_on_the_correct_outputs_of_kept_groups():
    ro = _rollout([1, 0, 1, 1], G=2, keep=[True, False])
    b = get_method("online_rft").build_batch(ro, BatchSettings(8, 0, 2))
    np.testing.assert_array_equal(b["correct"][:, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(b["weights"].sum(1), [1, 2, 0, 0])  # the inert group has no weight


def test_dpo_pairs_correct_with_wrong_outputs_of_a_group():
    ro = _rollout([0, 1, 1, 0, 1, 1, 1, 1], G=4)  # group 0: right 1, 2; wrong 0, 3. group 1: no wrong output
    b = get_method("dpo").build_batch(ro, BatchSettings(8, 0, 4))
    np.testing.assert_array_equal(b["pair_valid"][:, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    lengths = b["weights"].sum(1)
    np.testing.assert_array_equal(lengths[:4], [2, 1, 3, 4])  # (chosen 1, rejected 0), (chosen 2, rejected 3)
    assert lengths[4:].sum() == 0


def test_sft_trains_on_the_gold_responses():
    problems = [Problem(str(i), "q", "1") for i in range(3)]
    roller = Roller(ScriptedSampler({}), ExactGrader(), problems, [[1, i] for i in range(3)],
                    RolloutSettings(1, 2, 8, 16, data_seed=2), rewards=[])
    ro, position = roller.gold(1, 2, [[10], [11, 12], [13, 14, 15]])
    idx = question_indices(3, 2, 1, 2)
    assert position == 3 and [p.id for p in ro.problems] == [str(i) for i in idx]
    b = get_method("sft").build_batch(ro, BatchSettings(8, 0, 1))
    for row, i in enumerate(idx):
        resp = [[10], [11, 12], [13, 14, 15]][i]
        np.testing.assert_array_equal(b["targets"][row, 1:1 + len(resp)], resp)
        assert b["weights"][row].sum() == len(resp)


def test_the_loop_rejects_what_a_method_cannot_do():
    from dsmath_jax.rl.loop import RLRun
    c = base_rl_config()
    c.method, c.rollout.group_size = "dpo", 3
    with pytest.raises(ValueError, match="group_size must be even"):
        RLRun(c, "unused")
    c = base_rl_config()
    c.method, c.reward.kind = "online_rft", "prm"
    with pytest.raises(ValueError, match="process rewards"):
        RLRun(c, "unused")


def test_batches_are_cut_to_the_shortest_bucket_holding_the_longest_row():
    """Rows of 2 prompt + 1..4 completion tokens (5 inputs at most) in seq_len 64: with 4 buckets (16, 32, 48,
    64) every [rows, seq] array is cut to 16; per-row arrays stay. The GRPO loss and its gradient on the cut
    batch are the full batch's (right padding is past every real position of a causal row)."""
    assert [bucket_length(u, 64, 4) for u in (1, 16, 17, 33, 48, 49, 64)] == [16, 16, 32, 48, 48, 64, 64]
    assert [bucket_length(u, 100, 3) for u in (1, 40, 48, 49, 81)] == [48, 48, 48, 80, 100]  # ceil(100k/3) to 16s
    ro = _rollout([1, 0, 0, 0, 1, 1, 0, 1], G=4)
    full_settings = BatchSettings(seq_len=64, pad_id=0, group_size=4)
    full = get_method("grpo").build_batch(ro, full_settings)
    full["ref_logp"] = full["old_logp"] - 0.05 * full["weights"]
    cut = fit_length(dict(full), dataclasses.replace(full_settings, length_buckets=4))
    assert {k: v.shape for k, v in cut.items() if k != "truncated"} == {
        k: (8, 16) for k in ("inputs", "targets", "weights", "old_logp", "segment_ids", "advantages", "ref_logp")}
    assert fit_length(full, full_settings) is full  # one bucket: untouched
    rft = get_method("rft").build_batch(ro, full_settings)
    assert fit_length(rft, dataclasses.replace(full_settings, length_buckets=4))["correct"].shape == (8, 1)

    model = CausalLM(get_preset("tiny", vocab_size=256, num_layers=1, d_model=32, num_heads=2, num_kv_heads=2,
                                mlp_dim=64), rngs=nnx.Rngs(0))
    loss_fn = get_method("grpo").make_loss(LossSettings(PolicyLossConfig(beta=0.04)))

    @nnx.jit
    def loss_and_grad(m, batch):
        def loss(m):
            total, weight, _ = loss_fn(m, batch)
            return total / weight
        return nnx.value_and_grad(loss)(m)

    (a, ga), (b, gb) = (loss_and_grad(model, {k: jnp.asarray(v) for k, v in batch.items() if k != "truncated"})
                        for batch in (full, cut))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(nnx.state(ga)), jax.tree.leaves(nnx.state(gb))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
