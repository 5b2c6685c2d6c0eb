r"""Reward models for RL (PAPER.md §4): outcome (ORM) and process (PRM) reward models on a scalar head.

A reward model is a :class:`~dsmath_jax.model.ScalarHeadModel` (the decoder trunk with a scalar head, one
score per token) run over ``prompt + completion``. An ORM's reward is its score at the last completion
token (:func:`~dsmath_jax.rl.rewards.outcome_scores`); a PRM's step rewards are its scores at the token
ending each reasoning step (:func:`~dsmath_jax.rl.rewards.process_scores`). Both are trained as binary
classifiers, binary cross-entropy on the logit (the score), with soft labels allowed: ORM labels are rule
rewards (is the final answer right?), PRM labels Math-Shepherd's automatic step labels
(:mod:`dsmath_jax.rl.math_shepherd`; Wang et al. 2023, arXiv 2312.08935), hard (1 if some continuation
from the step reaches the right answer) or soft (the fraction that does). The paper trains its reward
model from DeepSeekMath-Base 7B at lr 2e-5 and, in iterative RL, keeps training it on the new policy's
samples with a replay of 10% historical data (PAPER.md §4, Algorithm 1; :mod:`dsmath_jax.rl.replay`).

Training examples are plain dicts of numpy values::

    ORM: {"tokens": int32[n] prompt + completion ids, "prompt_len": int, "label": float in [0, 1]}
    PRM: {"tokens", "prompt_len", "step_ends": int32[k] index in `tokens` of the LAST token of each step,
          "step_labels": float32[k] in [0, 1]}                            (a "label" may ride along)

:func:`rm_batch` lays examples out as a batch, :func:`orm_loss_fn` / :func:`prm_loss_fn` are losses for the
shared train step (:func:`dsmath_jax.train.step.make_train_step`), and :class:`RewardModel` holds a trained
model on a mesh: scoring (``scores`` / ``outcome`` / ``steps``), held-out evaluation, loading a
``dsmath rm`` run directory, and continual training (:meth:`RewardModel.make_trainer`) that is exactly
reproducible from (trainer state, examples, seed).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dsmath_jax.config.rm import KINDS
from dsmath_jax.data.tokenizers import Tokenizer, check_tokenizer_fits
from dsmath_jax.model import CausalLM, ModelConfig, ScalarHeadModel
from dsmath_jax.parallel.mesh import (
    DEFAULT_RULES,
    Rules,
    activation_sharding,
    batch_sharding,
    get_params,
    param_shardings,
)
from dsmath_jax.rl.rewards import outcome_scores, process_scores
from dsmath_jax.train.checkpoint import Checkpointer, CheckpointError, abstract_like
from dsmath_jax.train.step import StepFns, TrainState, make_train_step

log = logging.getLogger(__name__)

__all__ = ["KINDS", "Example", "RewardModel", "RewardModelTrainer", "rm_batch", "orm_loss_fn", "prm_loss_fn",
           "loss_fn", "bce_with_logits", "orm_examples", "check_examples", "batch_indices", "RewardModelError"]

Example = Mapping[str, Any]
# The [rows, ...] arrays of a batch (what goes to the device); rm_batch's scalar counters stay on the host.
_ROW_KEYS = ("inputs", "segment_ids", "weights", "labels", "step_ends", "step_labels")


class RewardModelError(ValueError):
    """Bad reward-model input: a malformed example, an unknown kind, a tokenizer that does not fit."""


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RewardModelError(f"reward model kind must be one of {KINDS}, got {kind!r}")
    return kind


# ------------------------------------------------------------------------------------------- examples
def check_examples(examples: Sequence[Example], kind: str, *, where: str = "examples") -> None:
    """Raises :class:`RewardModelError` naming the first bad example (index and field): tokens not a 1-d
    integer array, prompt_len outside ``[0, len(tokens))`` (an empty completion), a label outside [0, 1] or
    not finite, step ends not strictly increasing inside the completion, step labels of another length."""
    _check_kind(kind)
    for i, ex in enumerate(examples):
        at = f"{where}[{i}]"
        needed = ("tokens", "prompt_len") + (("label",) if kind == "orm" else ("step_ends", "step_labels"))
        for key in needed:
            if key not in ex:
                raise RewardModelError(f"{at}: missing {key!r} (a {kind.upper()} example has {', '.join(needed)}; "
                                       f"got keys {sorted(ex)})")
        tokens = np.asarray(ex["tokens"])
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise RewardModelError(f"{at}: tokens must be a 1-d integer array, got {tokens.dtype}{list(tokens.shape)}")
        n, prompt_len = len(tokens), int(ex["prompt_len"])
        if not 0 <= prompt_len < n:
            raise RewardModelError(f"{at}: prompt_len={prompt_len} must be in [0, {n}) (len(tokens)={n}); "
                                   "the completion must have at least one token")
        if kind == "orm":
            label = float(np.asarray(ex["label"]))
            if not (math.isfinite(label) and 0.0 <= label <= 1.0):
                raise RewardModelError(f"{at}: label={label} must be a probability in [0, 1]")
            continue
        ends, labels = np.asarray(ex["step_ends"]), np.asarray(ex["step_labels"], np.float64)
        if ends.ndim != 1 or labels.shape != ends.shape:
            raise RewardModelError(f"{at}: step_ends {list(ends.shape)} and step_labels {list(labels.shape)} must "
                                   "be 1-d arrays of the same length")
        if len(ends) == 0:
            raise RewardModelError(f"{at}: a PRM example needs at least one step (step_ends is empty)")
        if ends.min() < prompt_len or ends.max() >= n or np.any(np.diff(ends) <= 0):
            raise RewardModelError(f"{at}: step_ends {ends.tolist()} must increase strictly within the completion "
                                   f"[{prompt_len}, {n - 1}] (indices of the last token of each step)")
        if not (np.all(np.isfinite(labels)) and labels.min() >= 0.0 and labels.max() <= 1.0):
            raise RewardModelError(f"{at}: step_labels {labels.tolist()} must be probabilities in [0, 1]")


def orm_examples(prompt_ids: Sequence[Sequence[int]], completion_tokens: Sequence[Sequence[int]],
                 labels: Sequence[float]) -> list[dict[str, Any]]:
    """ORM examples from (prompt ids, completion ids, label) triples, e.g. the policy's samples with their
    rule rewards (:func:`dsmath_jax.rl.rewards.rule_rewards`). Empty completions are an error."""
    if not len(prompt_ids) == len(completion_tokens) == len(labels):
        raise RewardModelError(f"{len(prompt_ids)} prompts, {len(completion_tokens)} completions and "
                               f"{len(labels)} labels: one each per example")
    out = []
    for prompt, completion, label in zip(prompt_ids, completion_tokens, labels):
        out.append({"tokens": np.asarray(list(prompt) + list(completion), np.int32), "prompt_len": len(prompt),
                    "label": np.float32(label)})
    check_examples(out, "orm")
    return out


def rm_batch(examples: Sequence[Example], seq_len: int, pad_id: int = 0, kind: str = "orm",
             max_steps: int | None = None) -> dict[str, np.ndarray]:
    """Examples as a right-padded batch of ``len(examples)`` rows.

    Returns ``inputs`` [rows, seq_len] int32 (the tokens, unshifted: the score at a token reads the text up
    to and including it), ``segment_ids`` [rows, seq_len] int32 (1 on real tokens), ``weights`` [rows,
    seq_len] float32 (1 on completion positions: the ORM reads the last one), and ``labels`` [rows, 1]
    float32 (ORM; 2-d so the shared train step's [batch, seq] batch sharding applies to it) or
    ``step_ends`` [rows, max_steps] int32 (-1 = no step) and ``step_labels`` [rows, max_steps] float32 (PRM;
    ``max_steps`` defaults to the most steps of any example). Counters (0-d):
    ``truncated`` rows longer than ``seq_len`` (cut; an ORM then scores its last kept completion token,
    as :func:`~dsmath_jax.rl.rewards.outcome_scores` does on a cut rollout), ``dropped_rows`` rows left
    with no completion token (not scored), ``dropped_steps`` PRM steps past ``seq_len`` or ``max_steps``.
    """
    _check_kind(kind)
    if seq_len < 1:
        raise RewardModelError(f"seq_len must be >= 1, got {seq_len}")
    check_examples(examples, kind)
    rows = len(examples)
    out = {"inputs": np.full((rows, seq_len), pad_id, np.int32), "segment_ids": np.zeros((rows, seq_len), np.int32),
           "weights": np.zeros((rows, seq_len), np.float32)}
    step_columns = 0  # PRM: steps kept per row
    if kind == "orm":
        out["labels"] = np.zeros((rows, 1), np.float32)
    else:
        if max_steps is None:
            max_steps = max((len(ex["step_ends"]) for ex in examples), default=1)
        step_columns = max(int(max_steps), 1)
        out["step_ends"] = np.full((rows, step_columns), -1, np.int32)
        out["step_labels"] = np.zeros((rows, step_columns), np.float32)
    truncated = dropped_rows = dropped_steps = 0
    for r, ex in enumerate(examples):
        tokens = np.asarray(ex["tokens"])
        n, prompt_len = min(len(tokens), seq_len), int(ex["prompt_len"])
        truncated += len(tokens) > seq_len
        out["inputs"][r, :n] = tokens[:n]
        out["segment_ids"][r, :n] = 1
        out["weights"][r, prompt_len:n] = 1.0
        dropped_rows += prompt_len >= n
        if kind == "orm":
            out["labels"][r, 0] = float(np.asarray(ex["label"]))
            continue
        ends = np.asarray(ex["step_ends"], np.int64)
        labels = np.asarray(ex["step_labels"], np.float32)
        keep = ends < n
        ends, labels = ends[keep], labels[keep]
        kept = min(len(ends), step_columns)
        dropped_steps += len(keep) - kept
        out["step_ends"][r, :kept] = ends[:kept]
        out["step_labels"][r, :kept] = labels[:kept]
    out["truncated"] = np.asarray(truncated, np.int32)
    out["dropped_rows"] = np.asarray(dropped_rows, np.int32)
    out["dropped_steps"] = np.asarray(dropped_steps, np.int32)
    return out


# ------------------------------------------------------------------------------------------- losses
def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy of probabilities ``labels`` (soft labels allowed) against
    ``sigmoid(logits)``: ``-y log s(x) - (1 - y) log(1 - s(x)) = softplus(x) - y x``, computed stably."""
    logits = logits.astype(jnp.float32)
    return jnp.logaddexp(0.0, logits) - labels.astype(jnp.float32) * logits


def _classifier_loss(scores: jax.Array, labels: jax.Array, valid: jax.Array):
    valid = valid.astype(jnp.float32)
    count = valid.sum()
    total = (bce_with_logits(scores, labels) * valid).sum()
    right = ((scores > 0) == (labels >= 0.5)).astype(jnp.float32)
    denom = jnp.maximum(count, 1.0)
    metrics = {"accuracy": (right * valid).sum() / denom, "mean_score": (scores * valid).sum() / denom,
               "mean_label": (labels * valid).sum() / denom}
    return total, count, metrics


def orm_loss_fn():
    """ORM loss for `make_train_step` on a ScalarHeadModel: BCE-with-logits of the score at each row's last
    completion token (``outcome_scores``) against ``labels`` [rows, 1]; total = summed BCE over rows with a completion,
    weight = their count. Metrics: accuracy (score > 0 vs label >= 0.5), mean score, mean label."""

    def loss(model, batch):
        scores = model(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
        picked = outcome_scores(scores, batch["weights"])
        valid = jnp.asarray(batch["weights"]).sum(axis=1) > 0
        return _classifier_loss(picked, jnp.asarray(batch["labels"]).reshape(-1), valid)

    return loss


def prm_loss_fn():
    """PRM loss for `make_train_step` on a ScalarHeadModel: BCE-with-logits of the score at every step end
    (``process_scores``) against ``step_labels``; total = summed BCE over real steps, weight = their count.
    Metrics: step accuracy (score > 0 vs label >= 0.5), mean step score, mean step label."""

    def loss(model, batch):
        scores = model(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
        picked, valid = process_scores(scores, batch["step_ends"])
        return _classifier_loss(picked, batch["step_labels"], valid)

    return loss


def loss_fn(kind: str):
    """:func:`orm_loss_fn` or :func:`prm_loss_fn` by kind."""
    return orm_loss_fn() if _check_kind(kind) == "orm" else prm_loss_fn()


# ------------------------------------------------------------------------------------------- batches
def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of update ``step`` (absolute) of a training stream over ``num_examples``.

    The stream is epoch after epoch of permutations, epoch ``e`` permuted by ``default_rng([seed, e])``;
    update ``s`` takes stream items ``s * batch_size`` to ``(s + 1) * batch_size``. A pure function of its
    arguments, so training continues exactly however it is split into calls or interrupted."""
    if num_examples < 1 or batch_size < 1:
        raise RewardModelError(f"need examples and a batch size >= 1, got {num_examples} examples, "
                               f"batch_size {batch_size}")
    start, stop = step * batch_size, (step + 1) * batch_size
    out = []
    for epoch in range(start // num_examples, (stop - 1) // num_examples + 1):
        perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, epoch]).permutation(num_examples)
        lo, hi = max(start - epoch * num_examples, 0), min(stop - epoch * num_examples, num_examples)
        out.append(perm[lo:hi])
    return np.concatenate(out)


def _pad_rows(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Pads the [rows, ...] arrays with empty rows (no completion, no steps: they add nothing to a loss)."""
    rows = batch["inputs"].shape[0]
    extra = (-rows) % multiple
    if not extra:
        return batch
    fill = {"step_ends": -1}
    return {k: np.concatenate([v, np.full((extra,) + v.shape[1:], fill.get(k, 0), v.dtype)]) for k, v in batch.items()}


def _shapes(tree: Any) -> Any:
    """Shapes and dtypes of the leaves of a (concrete or abstract) pytree."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _device_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """The row arrays of a host batch (the same on every host) as global arrays: each host gives its rows."""
    procs, index = jax.process_count(), jax.process_index()
    out = {}
    for k in _ROW_KEYS:
        if k in batch:
            v = np.asarray(batch[k])
            per = v.shape[0] // procs
            out[k] = jax.make_array_from_process_local_data(sharding, v[index * per:(index + 1) * per])
    return out


# ------------------------------------------------------------------------------------------- the model
class RewardModel:
    """An outcome or process reward model: a ScalarHeadModel's graphdef and params on a mesh, plus how its
    batches are laid out (``seq_len``, ``pad_id``, ``max_steps``) and, when known, its tokenizer.

    Build one with :meth:`init_from_lm` (trunk copied from a language model, fresh head) or :meth:`load`
    (a ``dsmath rm`` run directory). Scoring is jitted: :meth:`scores` [rows, seq], :meth:`outcome` [rows],
    :meth:`steps` (rewards, mask) [rows, max_steps]. :meth:`make_trainer` continues training it; the params
    are then the trainer's.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: Any, kind: str, config: ModelConfig, *, mesh: Mesh,
                 rules: Rules = DEFAULT_RULES, seq_len: int | None = None, pad_id: int = 0, max_steps: int = 32,
                 tokenizer: Tokenizer | None = None):
        self.kind = _check_kind(kind)
        self.graphdef, self._params, self.config = graphdef, params, config
        self.mesh, self.rules = mesh, tuple(rules)
        self.seq_len = int(seq_len or config.max_seq_len)
        self.pad_id, self.max_steps = int(pad_id), int(max_steps)
        if self.seq_len > config.max_seq_len:
            raise RewardModelError(f"seq_len {self.seq_len} exceeds the model context {config.max_seq_len}")
        self.tokenizer = None
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
            self.tokenizer = tokenizer
        self._trainer: RewardModelTrainer | None = None
        abstract = nnx.merge(graphdef, _shapes(params))
        self.param_sharding = param_shardings(abstract, mesh, self.rules)
        self.row_sharding = batch_sharding(mesh, self.rules)
        axes = self.row_sharding.spec[0] if len(self.row_sharding.spec) else None
        axes = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        self.row_multiple = math.prod(mesh.shape[a] for a in axes) * jax.process_count()
        self._scores = jax.jit(self._scores_fn, in_shardings=(self.param_sharding, self.row_sharding,
                                                              self.row_sharding),
                               out_shardings=NamedSharding(mesh, P()))

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def init_from_lm(cls, lm: CausalLM, kind: str, mesh: Mesh, rules: Rules = DEFAULT_RULES, seed: int = 0,
                     **kwargs: Any) -> RewardModel:
        """A reward model whose trunk is a copy of ``lm``'s (the paper starts its RM from DeepSeekMath-Base
        7B, PAPER.md §4) and whose scalar head is fresh (seeded by ``seed``). The params are copied onto the
        mesh, so training the RM (which donates its buffers) never touches ``lm``'s. ``kwargs``: seq_len,
        pad_id, max_steps, tokenizer."""
        model = ScalarHeadModel.from_lm(lm, rngs=nnx.Rngs(seed))
        graphdef, _ = nnx.split(model)
        shardings = param_shardings(model, mesh, rules)
        params = jax.tree.map(lambda x, s: jax.device_put(jnp.array(x, copy=True), s), get_params(model), shardings)
        return cls(graphdef, params, kind, lm.config, mesh=mesh, rules=rules, **kwargs)

    @classmethod
    def abstract(cls, config: ModelConfig, kind: str, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                 **kwargs: Any) -> RewardModel:
        """A reward model of this architecture whose params are still abstract (shapes with shardings):
        a restore target (the ``params`` setter, or a trainer's ``set_state``, fills it)."""
        model = nnx.eval_shape(lambda: ScalarHeadModel(config, rngs=nnx.Rngs(0)))
        graphdef, _ = nnx.split(model)
        params = abstract_like(get_params(model), param_shardings(model, mesh, rules))
        return cls(graphdef, params, kind, config, mesh=mesh, rules=rules, **kwargs)

    @classmethod
    def load(cls, run_dir: str, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, step: int | None = None
             ) -> RewardModel:
        """The reward model of a ``dsmath rm`` run directory: architecture, kind and batch layout from its
        checkpoint's metadata, params from its latest checkpoint (or ``step``), tokenizer from the run dir
        (``tokenizer.model`` or ``tokenizer.json``) when present."""
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        if not epath.Path(ckpt_dir).is_dir():
            raise CheckpointError(f"{run_dir} is not a `dsmath rm` run directory: no checkpoints/ in it")
        with Checkpointer(ckpt_dir, read_only=True, async_save=False, max_to_keep=None) as ckpt:
            meta = ckpt.metadata(step)
            if meta.get("task") != "rm" or "model" not in meta or "kind" not in meta:
                raise CheckpointError(f"checkpoint {meta.get('step')} in {ckpt_dir} was not written by `dsmath rm` "
                                      f"(metadata task={meta.get('task')!r}, keys {sorted(meta)}): expected "
                                      "task 'rm' with 'kind' and 'model'")
            tokenizer = None
            from dsmath_jax.data.tokenizers import load_tokenizer
            for name in ("tokenizer.json", "tokenizer.model"):
                if epath.Path(run_dir, name).exists():
                    tokenizer = load_tokenizer(run_dir)
                    break
            rm = cls.abstract(ModelConfig.from_dict(meta["model"]), meta["kind"], mesh, rules,
                              seq_len=meta.get("seq_len"), pad_id=meta.get("pad_id", 0),
                              max_steps=meta.get("max_steps", 32), tokenizer=tokenizer)
            rm._params = ckpt.restore(meta["step"] if step is None else step, {"params": rm._params})["params"]
        return rm

    def layout(self) -> dict[str, Any]:
        """What a checkpoint's metadata records so :meth:`load` can rebuild this reward model."""
        return {"task": "rm", "kind": self.kind, "model": self.config.to_dict(), "seq_len": self.seq_len,
                "pad_id": self.pad_id, "max_steps": self.max_steps}

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raises TokenizerMismatchError if ``tokenizer`` emits ids beyond this reward model's vocabulary."""
        check_tokenizer_fits(tokenizer, self.config.vocab_size, what=f"{self.kind} reward model")

    @property
    def params(self) -> Any:
        """The current params (the trainer's, once :meth:`make_trainer` was called)."""
        return self._trainer.state.params if self._trainer is not None else self._params

    @params.setter
    def params(self, value: Any) -> None:
        """Replaces the params (placed on the mesh); with a trainer attached, its state's params."""
        if self._trainer is not None:
            if value is not self._trainer.state.params:
                self._trainer.state = self._trainer.state._replace(
                    params=jax.device_put(value, self._trainer.fns.state_sharding.params))
            return
        self._params = jax.device_put(value, self.param_sharding)

    # ---- scoring -------------------------------------------------------------------------------
    def _scores_fn(self, params, inputs, segment_ids):
        with activation_sharding(self.mesh, self.rules):
            return nnx.merge(self.graphdef, params)(inputs, None, segment_ids)

    def scores(self, batch: Mapping[str, np.ndarray]) -> jax.Array:
        """Per-token scores [rows, seq] float32 of a batch with ``inputs`` and ``segment_ids`` (e.g. from
        :func:`rm_batch`; on multi-host runs the same rows on every host). Replicated on the mesh."""
        inputs, segment_ids = batch["inputs"], batch.get("segment_ids")
        if isinstance(inputs, jax.Array):  # already global arrays (e.g. a placed rollout batch)
            if segment_ids is None:
                segment_ids = jnp.ones_like(inputs)
            if inputs.shape[0] % self.row_multiple:
                raise RewardModelError(f"a batch of {inputs.shape[0]} rows placed on the mesh must have a multiple "
                                       f"of {self.row_multiple} rows; pass numpy arrays to have it padded")
            return self._scores(self.params, jax.device_put(inputs, self.row_sharding),
                                jax.device_put(segment_ids, self.row_sharding))
        inputs = np.asarray(inputs, np.int32)
        segment_ids = np.ones_like(inputs) if segment_ids is None else np.asarray(segment_ids, np.int32)
        if inputs.ndim != 2:
            raise RewardModelError(f"inputs must be [rows, seq], got shape {inputs.shape}")
        if inputs.size and int(inputs.max()) >= self.config.vocab_size:
            raise RewardModelError(f"token id {int(inputs.max())} is beyond the reward model's vocabulary "
                                   f"({self.config.vocab_size}): a different tokenizer than the RM's?")
        rows = inputs.shape[0]
        padded = _pad_rows({"inputs": inputs, "segment_ids": segment_ids}, self.row_multiple)
        placed = _device_batch(padded, self.row_sharding)
        return self._scores(self.params, placed["inputs"], placed["segment_ids"])[:rows]

    def outcome(self, batch: Mapping[str, np.ndarray]) -> jax.Array:
        """ORM read-out: the score at each row's last completion token (``weights`` marks completion
        positions) -> [rows]."""
        return outcome_scores(self.scores(batch), jnp.asarray(batch["weights"]))

    def steps(self, batch: Mapping[str, np.ndarray], step_ends: np.ndarray | jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
        """PRM read-out: (step rewards, step mask), both [rows, max_steps], the scores at ``step_ends``
        (token indices, -1 = no step; default ``batch["step_ends"]``)."""
        ends = batch["step_ends"] if step_ends is None else step_ends
        return process_scores(self.scores(batch), jnp.asarray(ends, jnp.int32))

    def _completion_batch(self, prompt_ids, completions) -> dict[str, np.ndarray]:
        if len(prompt_ids) != len(completions):
            raise RewardModelError(f"{len(prompt_ids)} prompts but {len(completions)} completions")
        tokens = [list(getattr(c, "tokens", c)) for c in completions]
        examples = [{"tokens": np.asarray(list(p) + t, np.int32), "prompt_len": len(p), "label": 0.0}
                    for p, t in zip(prompt_ids, tokens)]
        return rm_batch(examples, self.seq_len, self.pad_id, "orm")

    def score_outcomes(self, prompt_ids: Sequence[Sequence[int]], completions: Sequence[Any]) -> np.ndarray:
        """ORM rewards [rows] of completions (token lists or `Completion`s) of their prompts (token ids):
        the score at each completion's last token, on unshifted ``prompt + completion`` rows laid out as in
        training (:func:`rm_batch`), so the reward reads exactly the position the RM was trained on."""
        return np.asarray(self.outcome(self._completion_batch(prompt_ids, completions)), np.float32)

    def score_steps(self, prompt_ids: Sequence[Sequence[int]], completions: Sequence[Any],
                    step_ends: np.ndarray) -> np.ndarray:
        """PRM step rewards [rows, max_steps] of completions: ``step_ends`` [rows, max_steps] are indices
        into each COMPLETION's tokens of its steps' last tokens (-1 = none; e.g. from
        :func:`dsmath_jax.rl.math_shepherd.step_end_tokens`, the positions the PRM was trained on). Steps
        cut off by ``seq_len`` score 0."""
        batch = self._completion_batch(prompt_ids, completions)
        ends = np.asarray(step_ends, np.int64)
        lens = np.asarray([len(p) for p in prompt_ids], np.int64)[:, None]
        at = np.where(ends >= 0, ends + lens, -1)
        at = np.where(at < self.seq_len, at, -1).astype(np.int32)
        rewards, mask = self.steps(batch, at)
        return np.where(np.asarray(mask), np.asarray(rewards), 0.0).astype(np.float32)

    def batch(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
        """:func:`rm_batch` with this model's kind and layout."""
        return rm_batch(examples, self.seq_len, self.pad_id, self.kind, self.max_steps)

    def evaluate(self, examples: Sequence[Example], batch_size: int = 64) -> dict[str, float]:
        """Held-out metrics over every scored item (rows for an ORM, steps for a PRM): mean BCE ``loss``,
        ``accuracy`` (score > 0 vs label >= 0.5), ``mean_score``, ``items``; plus ``truncated`` rows."""
        total = right = score_sum = items = truncated = 0.0
        rows = -(-batch_size // self.row_multiple) * self.row_multiple  # one static shape: one compilation
        for start in range(0, len(examples), batch_size):
            b = self.batch(examples[start:start + batch_size])
            truncated += int(b["truncated"])
            b = _pad_rows({k: b[k] for k in _ROW_KEYS if k in b}, rows)
            if self.kind == "orm":
                s = np.asarray(self.outcome(b), np.float64)
                y = b["labels"][:, 0].astype(np.float64)
                valid = b["weights"].sum(axis=1) > 0
            else:
                s, valid = map(np.asarray, self.steps(b))
                s, y = s.astype(np.float64), b["step_labels"].astype(np.float64)
            s, y = s[valid], y[valid]
            total += float(np.sum(np.logaddexp(0.0, s) - y * s))
            right += float(np.sum((s > 0) == (y >= 0.5)))
            score_sum += float(s.sum())
            items += s.size
        n = max(items, 1.0)
        return {"loss": total / n, "accuracy": right / n, "mean_score": score_sum / n, "items": items,
                "truncated": truncated}

    # ---- training ------------------------------------------------------------------------------
    def make_trainer(self, optimizer: optax.GradientTransformation, accum_steps: int = 1, *,
                     schedule: optax.Schedule | None = None) -> RewardModelTrainer:
        """A trainer that continues training this reward model with the shared train step; from now on
        :attr:`params` are the trainer's (its state is donated at every update)."""
        trainer = RewardModelTrainer(self, optimizer, accum_steps, schedule=schedule)
        self._trainer = trainer
        return trainer


class RewardModelTrainer:
    """Continual training of a :class:`RewardModel` (PAPER.md §4, Algorithm 1: after each RL iteration the
    reward model keeps training on the new policy's samples, with replay).

    ``state`` is a :class:`~dsmath_jax.train.step.TrainState` (step, params, opt_state) on the mesh;
    checkpoint its params and opt_state as items (``abstract_state()`` is their restore target,
    ``set_state`` puts a restored state back). :meth:`train` is a pure function of (state, examples, seed,
    steps, batch_size, start), so a run that checkpoints the state resumes bitwise.
    """

    def __init__(self, rm: RewardModel, optimizer: optax.GradientTransformation, accum_steps: int = 1, *,
                 schedule: optax.Schedule | None = None):
        self.rm = rm
        self.accum_steps = int(accum_steps)
        model = nnx.merge(rm.graphdef, _shapes(rm.params))
        self.fns: StepFns = make_train_step(model, optimizer, rm.mesh, rm.rules, loss_fn=loss_fn(rm.kind),
                                            accum_steps=self.accum_steps, schedule=schedule)
        params = rm.params
        if isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct):  # an abstract RM: set_state fills it
            self.state = jax.eval_shape(self.fns.init_state, params)
        else:
            self.state = self.fns.init_state(params)

    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def state_sharding(self) -> TrainState:
        return self.fns.state_sharding

    def abstract_state(self) -> TrainState:
        """The state's shapes, dtypes and shardings: the target for restoring a checkpointed state."""
        return abstract_like(self.state, self.fns.state_sharding)

    def set_state(self, state: TrainState | Mapping[str, Any]) -> None:
        """Puts a (restored) state in place: a TrainState, or the dict a checkpoint gives back."""
        if not isinstance(state, TrainState):
            state = TrainState(**{k: state[k] for k in TrainState._fields})
        state = state._replace(step=np.asarray(state.step, np.int32))
        self.state = jax.device_put(state, self.fns.state_sharding)

    def train(self, examples: Sequence[Example], steps: int, batch_size: int, seed: int = 0, *,
              start: int = 0) -> dict[str, float]:
        """Runs ``steps`` updates; update ``i`` trains on the examples ``batch_indices(len(examples),
        batch_size, seed, start + i)``, so the result depends only on (state, examples, seed, steps,
        batch_size, start). A run split into calls passes ``start`` = updates done so far on the same
        examples and seed (e.g. ``trainer.step``); separate training rounds (RL iterations) use a new seed.
        Returns metrics averaged over the updates: loss, accuracy, mean_score, mean_label, grad_norm,
        items (scored per update), skipped_steps (non-finite), truncated / dropped_steps (rows cut to
        ``seq_len``, steps lost), step (the state's update count after)."""
        if steps < 0:
            raise RewardModelError(f"steps must be >= 0, got {steps}")
        if not examples:
            raise RewardModelError("train got no examples")
        check_examples(examples, self.rm.kind)
        multiple = self.rm.row_multiple * self.accum_steps  # every micro-batch splits over the data axes
        history: list[dict] = []
        truncated = dropped = 0
        for s in range(start, start + steps):
            idx = batch_indices(len(examples), batch_size, seed, s)
            batch = self.rm.batch([examples[i] for i in idx])
            truncated += int(batch["truncated"])
            dropped += int(batch["dropped_steps"])
            placed = _device_batch(_pad_rows({k: batch[k] for k in _ROW_KEYS if k in batch}, multiple),
                                   self.fns.batch_sharding)
            self.state, metrics = self.fns.train_step(self.state, placed)
            history.append(metrics)
        history = jax.device_get(history)
        out: dict[str, float] = {"step": float(self.step), "truncated": float(truncated),
                                 "dropped_steps": float(dropped)}
        if history:
            finite = np.asarray([int(m["finite"]) for m in history])
            out["skipped_steps"] = float((finite == 0).sum())
            for key in ("loss", "accuracy", "mean_score", "mean_label", "grad_norm", "tokens", "lr"):
                vals = [float(m[key]) for m, ok in zip(history, finite) if key in m and ok]
                if vals:
                    out["items" if key == "tokens" else key] = float(np.mean(vals))
        return out

