"""Iterative RL as the paper describes it (PAPER.md §4, Algorithm 1) and PPO's value model from the reward
model: Math-Shepherd relabelling of new samples on a task without step results (a jsonl source), the replay
seeded with the reward model's own training data at the configured share, the reference reset to the policy
at the start of every iteration, and `ppo.critic_init`."""

import collections
import json

import jax
import numpy as np
import pytest
from conftest import CharTokenizer, load_config
from flax import nnx

from dsmath_jax.config.checks import ConfigError
from dsmath_jax.config.rl import validate
from dsmath_jax.data.tasks import load_problems
from dsmath_jax.evals.grader import Verdict
from dsmath_jax.generate.sampler import Completion, SamplingParams
from dsmath_jax.model import CausalLM, ScalarHeadModel, get_params, get_preset
from dsmath_jax.parallel import create_sharded, make_mesh
from dsmath_jax.rl.iterative import LabelSettings, label_order, label_rollout, rm_training_examples
from dsmath_jax.rl.math_shepherd import math_shepherd_labels
from dsmath_jax.rl.ppo import Critic, check_critic_reward_model
from dsmath_jax.rl.replay import ReplayBuffer, history_count
from dsmath_jax.rl.rollout import Rollout

pytestmark = pytest.mark.xdist_group("iterative_rl")


class LastLineGrader:
    """Correct when the last line of the text is the gold answer."""

    def __init__(self):
        self.items = []

    def grade(self, items):
        items = list(items)
        self.items.extend(items)
        return [Verdict(t.strip().split("\n")[-1], t.strip().split("\n")[-1] == gold) for t, gold, *_ in items]


class ScriptedSampler:
    """Continuations of each prefix (by its decoded text) written out in advance; records its calls."""

    def __init__(self, script):
        self.script, self.calls, self.params = script, [], None

    def update_params(self, params):
        self.params = params

    def release_params(self):
        self.params = None

    def generate(self, prompts, params, **kw):
        self.calls.append(([list(p) for p in prompts], params, kw))
        return [[Completion(i, j, [ord(c) for c in t], [0.0] * len(t), t, "stop")
                 for j, t in enumerate(self.script["".join(chr(x) for x in p)][:params.n])]
                for i, p in enumerate(prompts)]


def _jsonl(tmp_path, rows):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"kind": "jsonl", "files": [str(path)]}


def _rollout(problems, prompts, texts):
    """A rollout of len(problems) questions x G outputs (texts[q][j]) graded by the last line."""
    comps = [[Completion(q, j, [ord(c) for c in t], [0.0] * len(t), t, "stop") for j, t in enumerate(group)]
             for q, group in enumerate(texts)]
    correct = np.asarray([float(t.split("\n")[-1] == p.answer) for p, g in zip(problems, texts) for t in g],
                         np.float32)
    return Rollout(problems=list(problems), prompt_ids=prompts, completions=comps, correct=correct, rewards=correct,
                   keep=np.ones(len(problems), bool), sampled_rows=correct.size)


def test_math_shepherd_relabelling_on_a_jsonl_source_by_hand(tmp_path):
    tok = CharTokenizer()
    spec = _jsonl(tmp_path, [{"question": "2+3*2?", "answer": "8", "kind": "number"},
                             {"question": "9-4?", "answer": "5", "kind": "number"}])
    problems = load_problems(spec, "train")
    assert all(p.intermediates is None for p in problems)  # no step results: only Math-Shepherd can label steps
    prompts = [tok.encode("Q1\n"), tok.encode("Q2\n")]
    texts = [["3*2=6\n2+6=8\n8", "2+3=5\n5*2=10\n10"], ["9-4=5\n5", "9-4=6\n6"]]
    ro = _rollout(problems, prompts, texts)
    script = {"Q1\n3*2=6\n": ["so\n8", "9"], "Q1\n3*2=6\n2+6=8\n": ["8", "7"],
              "Q1\n2+3=5\n": ["7", "8"], "Q1\n2+3=5\n5*2=10\n": ["10", "11"],
              "Q2\n9-4=5\n": ["5", "5"], "Q2\n9-4=6\n": ["6", "7"]}
    sampler, grader = ScriptedSampler(script), LastLineGrader()
    settings = LabelSettings(n=2, mode="hard", sampling=SamplingParams(max_new_tokens=9, temperature=0.7),
                             samples_per_step=3)
    stats = collections.Counter()
    out = label_rollout(ro, "prm", tok, settings, iteration=2, sampler=sampler, grader=grader, seed=123, stats=stats)
    # Three samples labelled, spread over the questions: q0 s0, q1 s0, q0 s1 (rows 0, 2, 1).
    assert label_order(2, 2) == [0, 2, 1, 3]
    (prefixes, params, kw), = sampler.calls  # one sampling call for every prefix
    assert [tok.decode(p) for p in prefixes] == ["Q1\n3*2=6\n", "Q1\n3*2=6\n2+6=8\n", "Q2\n9-4=5\n", "Q1\n2+3=5\n",
                                                 "Q1\n2+3=5\n5*2=10\n"]
    assert params.n == 2 and params.seed == 123 and params.temperature == 0.7 and kw == {}
    # Hand-worked hard labels: a step is good if one of its 2 continuations ends in the gold answer; the
    # answer line is the sample's own correctness.
    assert [ex["step_labels"].tolist() for ex in out] == [[1.0, 1.0, 1.0], [1.0, 1.0], [1.0, 0.0, 0.0]]
    assert [float(ex["label"]) for ex in out] == [1.0, 1.0, 0.0]
    assert [int(ex["iteration"]) for ex in out] == [2, 2, 2]
    assert out[0]["step_ends"].tolist() == [3 + 5, 3 + 11, 3 + 12] and out[0]["tokens"].tolist() == prompts[0] + \
        tok.encode(texts[0][0])
    # The same samples through math_shepherd_labels on its own, with the same sampler and seed: the same labels.
    again = math_shepherd_labels(ScriptedSampler(script), LastLineGrader(), [prompts[0], prompts[1], prompts[0]],
                                 [tok.encode(texts[0][0]), tok.encode(texts[1][0]), tok.encode(texts[0][1])],
                                 ["8", "5", "8"], "number", tok, n=2, mode="hard",
                                 sampling=SamplingParams(max_new_tokens=9, temperature=0.7, seed=123))
    for a, b in zip(out, again):
        for k in ("tokens", "step_ends", "step_labels", "label"):
            np.testing.assert_array_equal(a[k], b[k])
    assert stats["samples"] == 3 and stats["prefixes"] == 5 and stats["continuations"] == 10
    # Soft labels: the fraction of continuations that reach the answer.
    soft = label_rollout(ro, "prm", tok, LabelSettings(n=2, mode="soft", samples_per_step=1), iteration=1,
                         sampler=ScriptedSampler(script), grader=LastLineGrader(), seed=0)
    assert [ex["step_labels"].tolist() for ex in soft] == [[0.5, 0.5, 1.0]]
    # The prefix cap (3): q0 s0 (2 prefixes) and q1 s0 (1) fit; q0 s1 (2) and q1 s1 (1) would pass it.
    stats = collections.Counter()
    capped = label_rollout(ro, "prm", tok, LabelSettings(n=2, max_prefixes_per_step=3), iteration=1,
                           sampler=ScriptedSampler(script), grader=LastLineGrader(), seed=0, stats=stats)
    assert [len(ex["step_ends"]) for ex in capped] == [3, 2] and stats["skipped_samples"] == 2
    # ORM: the outcome; "outcome" PRM labels: the outcome on every step; the exact step checker needs step results.
    orm = label_rollout(ro, "orm", tok, settings, iteration=1)
    assert [float(ex["label"]) for ex in orm] == [1.0, 1.0, 0.0] and "step_ends" not in orm[0]
    outcome = label_rollout(ro, "prm", tok, LabelSettings(prm_labels="outcome", samples_per_step=3), iteration=1)
    assert [ex["step_labels"].tolist() for ex in outcome] == [[1.0] * 3, [1.0] * 2, [0.0] * 3]
    with pytest.raises(ValueError, match="'step_check' needs problems with step results"):
        label_rollout(ro, "prm", tok, LabelSettings(prm_labels="step_check"), iteration=1)
    with pytest.raises(ValueError, match="prm_labels='bogus'"):
        LabelSettings(prm_labels="bogus")


def test_the_replay_starts_with_the_reward_models_training_split(tmp_path):
    from dsmath_jax.commands.rm import LABELS_FILE, save_labels
    examples = [{"tokens": np.arange(i, i + 5, dtype=np.int32), "prompt_len": 2,
                 "step_ends": np.asarray([3, 4], np.int32), "step_labels": np.asarray([1.0, float(i % 2)], np.float32),
                 "label": np.float32(i % 2), "problem": np.int64(i // 2)} for i in range(30)]
    validation = np.asarray([i // 2 in (0, 5) for i in range(30)])  # problems 0 and 5 held out: 4 examples
    save_labels(str(tmp_path / LABELS_FILE), examples, validation, {})
    history = rm_training_examples(str(tmp_path), "prm")
    assert [int(ex["tokens"][0]) for ex in history] == [i for i in range(30) if not validation[i]]  # train split
    assert all(int(ex["iteration"]) == 0 and set(ex) == {"tokens", "prompt_len", "label", "iteration", "step_ends",
                                                            "step_labels"} for ex in history)
    buf = ReplayBuffer(100, history_fraction=0.1, seed=3)
    buf.add_history(history)
    new = [dict(ex, iteration=np.int64(1)) for ex in history[:18]]
    buf.add_pending(new)
    got = collections.Counter(int(ex["iteration"]) for ex in buf.training_set())
    assert got == {1: 18, 0: history_count(18, 26, 0.1)} and got[0] == 2  # 2 of 20 = 10%: the first retraining
    with pytest.raises(ValueError, match="replay_rm_data=False"):
        rm_training_examples(str(tmp_path / "nowhere"), "prm")


# ------------------------------------------------------------------------------------------- PPO's critic
@pytest.fixture(scope="module")
def tiny_lm():
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    cfg = get_preset("tiny", vocab_size=128, max_seq_len=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64)
    return create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh), mesh


def test_the_critic_starts_as_the_reward_model(tiny_lm):
    policy, mesh = tiny_lm
    reward_model = create_sharded(lambda: ScalarHeadModel(policy.config, rngs=nnx.Rngs(7)), mesh)
    critic = Critic(policy, mesh, lr=1e-3, config=reward_model.config)
    critic.init(policy, seed=0, reward_model=reward_model)
    rm_params, critic_params = get_params(reward_model), critic.state.params
    assert jax.tree.structure(rm_params) == jax.tree.structure(critic_params)
    for a, b in zip(jax.tree.leaves(rm_params), jax.tree.leaves(critic_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert critic_params is not rm_params  # a copy: the reward model stays frozen
    from_policy = Critic(policy, mesh, lr=1e-3)
    from_policy.init(policy, seed=0)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(rm_params), jax.tree.leaves(from_policy.state.params)))
    # A reward model with another vocabulary or tokenizer is an error naming both.
    other = get_preset("tiny", vocab_size=256, max_seq_len=64)
    with pytest.raises(ValueError, match=r"rm_dir_x has a vocabulary of 256 tokens but the policy policy_dir has 128"):
        check_critic_reward_model(other, policy.config, rm_source="rm_dir_x", policy_source="policy_dir")

    class Shifted(CharTokenizer):
        def encode(self, text, add_bos=False, add_eos=False):  # noqa: ARG002
            return [ord(ch) + 1 for ch in text]

    with pytest.raises(ValueError, match=r"rm_dir_x and the policy policy_dir have different tokenizers.*probe"):
        check_critic_reward_model(policy.config, policy.config, rm_source="rm_dir_x", policy_source="policy_dir",
                                  rm_tokenizer=Shifted(), policy_tokenizer=CharTokenizer())
    check_critic_reward_model(policy.config, policy.config, rm_source="a", policy_source="b",
                              rm_tokenizer=CharTokenizer(), policy_tokenizer=CharTokenizer(), seq_len=64)


def test_critic_init_config():
    from dsmath_jax.rl.loop import RLRun
    c = load_config("configs/rl/paradigm.py:ppo")
    assert c.ppo.critic_init == "auto"
    c.init.run_dir = "policy"
    assert RLRun(c, "unused").critic_init() == "policy"  # the rule reward: no reward model
    c.reward.update(kind="orm", rm_dir="orm_run")
    assert RLRun(c, "unused").critic_init() == "reward_model"  # the paper's PPO: from the reward model
    c.ppo.critic_init = "policy"
    assert RLRun(c, "unused").critic_init() == "policy"
    validate(c)
    c.ppo.critic_init = "reward_model"
    validate(c)
    c.reward.update(kind="rule", rm_dir=None)
    with pytest.raises(ConfigError, match=r"ppo.critic_init='reward_model'.*reward.kind='rule'"):
        validate(c)
    with pytest.raises(ValueError, match=r"ppo.critic_init='reward_model'.*has none"):
        RLRun(c, "unused").require_paths()
    c.ppo.critic_init = "value_head"
    with pytest.raises(ConfigError, match="ppo.critic_init='value_head' is not one of"):
        validate(c)
    c = load_config("configs/rl/iterative_grpo.py")
    assert (c.rm_update.prm_labels, c.rm_update.label_n, c.rm_update.label_mode, c.rm_update.replay_rm_data,
            c.rm_update.history_fraction) == ("math_shepherd", 8, "hard", True, 0.1)
    c.rm_update.prm_labels = "oracle"
    with pytest.raises(ConfigError, match="rm_update.prm_labels='oracle' is not one of"):
        validate(c)


# ------------------------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def policy_and_prm(tmp_path_factory):
    """A tiny SFT policy on the arithmetic task (a few dozen steps: it need not be good) and a tiny
    Math-Shepherd PRM from it (`dsmath rm`, a few labelled problems, 2 steps)."""
    from dsmath_jax.commands.rm import main
    from dsmath_jax.train.loop import train
    c = load_config("configs/sft/deepseekmath_instruct.py:tiny")
    c.data.sources = [{"kind": "sft", "name": "arith_sft", "weight": 1.0, "sources": [
        {"kind": "arithmetic", "arithmetic": {"n_train": 2000, "n_test": 64, "seed": 0}}]}]
    c.data.update(seq_len=128, eval_split=None)
    c.model.max_seq_len = 256
    c.tokenizer.train_docs = 2000
    c.train.update(steps=30, batch_size=16, eval_every=0, checkpoint_every=1000, tensorboard=False)
    sft = tmp_path_factory.mktemp("sft")
    assert train(c, str(sft), task="sft")["status"] == "completed"
    prm = tmp_path_factory.mktemp("prm")
    assert main(["--config=configs/rm/prm_math_shepherd.py:tiny", f"--workdir={prm}", f"--config.init.run_dir={sft}",
                 "--config.data.limit_per_source=8", "--config.sampling.samples_per_problem=2",
                 "--config.sampling.max_new_tokens=32", "--config.labels.n=2", "--config.labels.max_new_tokens=16",
                 "--config.train.steps=2", "--config.train.batch_size=8", "--config.train.eval_every=0",
                 "--config.train.checkpoint_every=2", "--config.train.tensorboard=False",
                 "--config.data.seq_len=128"]) == 0
    return str(sft), str(prm)


@pytest.mark.xdist_group("sandbox")
def test_iterative_loop_relabels_replays_and_resets_the_reference(policy_and_prm, tmp_path, monkeypatch):
    """Two iterations of one step on a jsonl source with a Math-Shepherd PRM: each step's samples are labelled
    by Math-Shepherd from the rollout's own samples (the sampling seed of the step), the first retraining
    mixes the PRM's own training data in at 10%, and the reference is the policy at the end of iteration 1."""
    from dsmath_jax.commands.rm import load_labels
    from dsmath_jax.rl import iterative
    from dsmath_jax.rl.loop import run_rl
    from dsmath_jax.rl.rollout import sampling_seed
    from dsmath_jax.train.checkpoint import Checkpointer
    sft, prm = policy_and_prm
    rows = [{"question": f"Tom has {a} apples. He buys {b} more. How many apples does Tom have now?",
             "answer": str(a + b), "kind": "number"} for a, b in [(3, 4), (7, 5), (2, 9), (6, 8)]]
    calls, training_sets = [], []
    real_labels = iterative.math_shepherd_labels

    def recording(sampler, grader, prompts, completions, golds, kinds, tokenizer, **kw):
        calls.append(dict(prompts=prompts, completions=completions, golds=golds, kinds=kinds, **kw))
        return real_labels(sampler, grader, prompts, completions, golds, kinds, tokenizer, **kw)

    monkeypatch.setattr(iterative, "math_shepherd_labels", recording)
    real_set = iterative.RewardModelUpdates.training_set
    monkeypatch.setattr(iterative.RewardModelUpdates, "training_set",
                        lambda self: training_sets.append(real_set(self)) or training_sets[-1])

    c = load_config("configs/rl/iterative_grpo.py:tiny")
    c.init.run_dir, c.reward.rm_dir = sft, prm
    c.data.problems = _jsonl(tmp_path, rows)
    c.train.update(iterations=2, steps_per_iteration=1, checkpoint_every=1, log_every=1, tensorboard=False,
                   async_checkpoint=False)
    c.rollout.update(questions_per_step=2, group_size=8, max_new_tokens=24, sampler_batch_size=16)
    c.rm_update.update(steps=1, batch_size=8, samples_per_step=9, label_n=2)
    c.eval.update(every=0, at_start=False)
    validate(c)
    summary = run_rl(c, str(tmp_path / "run"))
    assert summary["status"] == "completed" and summary["step"] == 2

    # Math-Shepherd on the jsonl problems: 9 of the 16 samples a step (one of each question first), their golds, N = 2,
    # hard labels, continuations seeded by (run seed, step).
    assert len(calls) == 2
    golds = {r["answer"] for r in rows}
    for step, call in enumerate(calls, 1):
        k = len(call["completions"])  # 9, less any empty sample (skipped, counted)
        assert 5 <= k <= 9 and set(call["golds"]) <= golds and call["kinds"] == ["number"] * k
        assert call["n"] == 2 and call["mode"] == "hard"
        assert call["sampling"].seed == sampling_seed(c.seed, step, 17) and call["sampling"].temperature == 1.0
        assert call["golds"][0] != call["golds"][1]  # two questions' first samples before any second sample
    # The first retraining: the new samples plus the PRM's own training data at 10% of the set.
    examples, validation, _ = load_labels(f"{prm}/labels.npz")
    first = training_sets[0]
    by_origin = collections.Counter(int(ex["iteration"]) for ex in first)
    new = by_origin[1]
    assert new == sum(1 for x in calls[0]["completions"] if len(x))
    assert by_origin[0] == history_count(new, int((~validation).sum()), 0.1) >= 1 and set(by_origin) == {0, 1}
    train_tokens = {tuple(ex["tokens"].tolist()) for ex, v in zip(examples, validation) if not v}
    assert all(tuple(ex["tokens"].tolist()) in train_tokens for ex in first if int(ex["iteration"]) == 0)
    metrics = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    ends = [r for r in metrics if "rm_loss" in r]
    assert [r["rm_examples_replayed_rm_data"] for r in ends][0] == by_origin[0] and len(ends) == 2
    assert all("rm_label_prefixes" in r for r in metrics if "loss" in r)
    # Algorithm 1: the reference is reset to the policy at the start of every iteration.
    with Checkpointer(tmp_path / "run" / "checkpoints", read_only=True) as ck:
        one, two = ck.restore(1), ck.restore(2)
    p1, r1, r2 = (jax.tree.leaves(x) for x in (one["params"], one["ref_params"], two["ref_params"]))
    for p, ref in zip(p1, r2):  # ref (iteration 2) = the policy after step 1, in the reference's dtype
        np.testing.assert_array_equal(np.asarray(p).astype(np.asarray(ref).dtype), np.asarray(ref))
    assert not all(np.array_equal(np.asarray(a).astype(np.asarray(b).dtype), np.asarray(b)) for a, b in zip(p1, r1))
