"""Hugging Face `LlamaForCausalLM` directories <-> our run directories, with a logit check (`dsmath convert`).

`hf_to_run` writes a run directory as `dsmath pretrain/sft` lay one out (config.json, tokenizer, an Orbax
params checkpoint at step 0); `run_to_hf` writes config.json, safetensors and the run's tokenizer files. Both
write beside the output and rename into place only when the logit check passed (see the command's help in
`dsmath_jax.commands.convert` for the check, its tolerances and the outputs of a failed check).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError

from dsmath_jax.data.tokenizers import check_tokenizer_fits, load_tokenizer
from dsmath_jax.model import ConfigError, ModelConfig, get_params, load_hf, save_hf
from dsmath_jax.model.config import dtype_name
from dsmath_jax.parallel import DEFAULT_RULES
from dsmath_jax.train.checkpoint import Checkpointer
from dsmath_jax.train.restore import load_run
from dsmath_jax.train.rundir import write_json

# dsmath_jax.train.checkpoint/restore are imported where used: importing Orbax configures the root logger,
# which would silence the command's own logging set-up.

log = logging.getLogger(__name__)

CHECK_FILE = "convert_check.json"
CHECKPOINT_STEP = 0
DTYPE_CHOICES = ("float32", "bfloat16", "float16")
# (atol, rtol) of the logit check by output dtype: float32 conversions are exact up to the order of float
# operations; half-precision ones round every weight (relative error up to 2**-8), which moves the logits by a
# small fraction of their scale.
DEFAULT_TOLERANCE = {"float32": (1e-3, 1e-4), "bfloat16": (0.0, 0.05), "float16": (0.0, 0.05)}
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")
CHECK_TEXT = ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
              "in May. How many clips did Natalia sell altogether in April and May?\nAnswer: In May she sold "
              "48/2 = 24 clips, so altogether $48 + 24 = \\boxed{72}$.")


class ConvertError(RuntimeError):
    """A conversion that cannot be done: missing or unreadable input, an output in the way, ..."""


class CheckFailedError(ConvertError):
    """The converted model's logits differ from its source's by more than the tolerance."""


# ------------------------------------------------------------------------------------------- paths
def _is_remote(path: str) -> bool:
    return "://" in path


def _check_output(path: str, sources: list[str], overwrite: bool) -> str:
    """Absolute output path; refuses remote paths, outputs overlapping an input, and non-empty outputs
    unless `overwrite`."""
    if _is_remote(path):
        raise ConvertError(f"output {path}: only local paths are supported (write locally, then copy with "
                           "gsutil/gcloud storage)")
    out = os.path.abspath(path)
    for src in sources:
        a, b = os.path.realpath(out), os.path.realpath(src)
        if os.path.commonpath([a, b]) in (a, b):
            raise ConvertError(f"output {out} and input {src} overlap: pick an output outside the input")
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise ConvertError(f"output {out} exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise ConvertError(f"output {out} exists and is not empty; pass --overwrite to replace it")
    return out


def _stage(out: str) -> str:
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-convert-", dir=parent)


def _publish(staging: str, out: str) -> None:
    """Renames `staging` to `out`; an existing `out` is swapped out first and deleted only afterwards."""
    old = None
    if os.path.isdir(out):
        if os.listdir(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
            os.rmdir(old)
            os.replace(out, old)
        else:
            os.rmdir(out)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _reject(staging: str, out: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    failed = f"{out}.failed-check-{stamp}"
    while os.path.lexists(failed):
        failed += "x"
    os.replace(staging, failed)
    return failed


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------- inputs
def _require_hf_dir(path: str) -> None:
    if _is_remote(path):
        raise ConvertError(f"--from_hf={path}: only local paths are supported (copy the model locally first)")
    if not os.path.isdir(path):
        raise ConvertError(f"--from_hf={path} is not a directory (expected a Hugging Face model directory with "
                           "config.json and model.safetensors or model.safetensors.index.json)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConvertError(f"Hugging Face directory {path} has no config.json")
    if not (os.path.isfile(os.path.join(path, "model.safetensors"))
            or os.path.isfile(os.path.join(path, "model.safetensors.index.json"))):
        found = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".safetensors")))
        raise ConvertError(f"Hugging Face directory {path} has no model.safetensors or model.safetensors.index.json"
                           + (f" (found {found}: re-save it with save_pretrained(safe_serialization=True))"
                              if found else ""))


def _require_run_dir(path: str) -> None:
    if _is_remote(path):
        raise ConvertError(f"--from_run={path}: only local paths are supported (copy the run locally first)")
    if not os.path.isdir(path):
        raise ConvertError(f"--from_run={path} is not a directory (expected a run directory with config.json "
                           "and checkpoints/)")
    if not os.path.isdir(os.path.join(path, "checkpoints")):
        if _looks_hf(path):
            raise ConvertError(f"{path} is a Hugging Face model directory, not a run directory: it needs no "
                               "conversion to be evaluated; use --from_hf to make a run directory of it")
        raise ConvertError(f"run directory {path} has no checkpoints/ (expected the Orbax checkpoints a "
                           "`dsmath pretrain/sft` run writes)")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ConvertError(f"run directory {path} has no config.json (the run's config, with its `model` section)")
    try:
        with open(config, encoding="utf-8") as f:
            run = json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{config} is not valid JSON: {e}") from e
    if not isinstance(run, dict) or not isinstance(run.get("model"), dict):
        raise ConvertError(f"{config} has no `model` section describing the architecture")


def _looks_hf(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("model.safetensors", "model.safetensors.index.json"))


def _tokenizer_files(tok_path: str) -> list[tuple[str, str]]:
    """[(source file, name in the output)] for the tokenizer loaded from `tok_path` (a file): the file
    itself under its canonical name, plus the HF side files next to a tokenizer.json."""
    src_dir = os.path.dirname(tok_path)
    if tok_path.endswith(".json"):
        files = [(tok_path, "tokenizer.json")]
        files += [(os.path.join(src_dir, n), n) for n in TOKENIZER_SIDE_FILES
                  if os.path.isfile(os.path.join(src_dir, n))]
        return files
    return [(tok_path, "tokenizer.model")]


# ------------------------------------------------------------------------------------------- the check
def check_token_ids(tokenizer, vocab_size: int, *, sequences: int, tokens: int, seed: int = 0) -> np.ndarray:
    """[sequences, tokens] int32 ids, the same on every run: the first row is a fixed math text (bos first
    when the tokenizer has one), cut or padded with random ids; the others random ids below
    min(model vocab, tokenizer vocab)."""
    limit = vocab_size if tokenizer is None else max(1, min(vocab_size, tokenizer.vocab_size))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, limit, (sequences, tokens)).astype(np.int32)
    if tokenizer is not None:
        text = tokenizer.encode(CHECK_TEXT, add_bos=tokenizer.bos_id is not None)[:tokens]
        ids[0, :len(text)] = [min(i, limit - 1) for i in text]
    return ids


def model_logits(model, ids: np.ndarray) -> np.ndarray:
    """Float32 logits [batch, seq, vocab] of our model on `ids`, at the highest matmul precision."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    with jax.default_matmul_precision("highest"):
        out = forward(state, jnp.asarray(ids, jnp.int32))
    return np.asarray(jax.device_get(out), np.float32)


def transformers_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def transformers_logits(hf_dir: str, ids: np.ndarray) -> np.ndarray:
    """Float32 logits of `transformers.LlamaForCausalLM` loaded from `hf_dir` (weights upcast to float32)."""
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir).float().eval()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(ids, np.int64))).logits.float().numpy()
    del model
    return out


def compare_logits(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: float,
                   what: tuple[str, str]) -> dict:
    """Max/mean |difference| and greedy (argmax) agreement of two [batch, seq, vocab] logit arrays."""
    if reference.shape != candidate.shape:
        return {"name": name, "reference": what[0], "candidate": what[1], "passed": False,
                "error": f"logit shapes differ: {reference.shape} vs {candidate.shape}"}
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.isfinite(candidate).all())
    greedy_ref, greedy_got = reference.argmax(-1), candidate.argmax(-1)
    agree = int((greedy_ref == greedy_got).sum())
    max_diff = float(diff.max()) if finite else None
    return {"name": name, "reference": what[0], "candidate": what[1], "max_abs_diff": max_diff,
            "mean_abs_diff": float(diff.mean()) if finite else None,
            "greedy_agree": agree, "greedy_total": int(greedy_ref.size),
            "greedy_all_equal": agree == greedy_ref.size, "finite": finite,
            "passed": finite and max_diff is not None and max_diff <= tolerance}


def _tolerance(dtype: str, atol: float | None, rtol: float | None, scale: float) -> dict:
    default_atol, default_rtol = DEFAULT_TOLERANCE[dtype]
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    return {"atol": atol, "rtol": rtol, "max_abs_source_logit": scale, "tolerance": atol + rtol * scale}


def _log_comparison(c: dict, tolerance: float) -> None:
    if "error" in c:
        log.error("check %s: %s", c["name"], c["error"])
        return
    if not c["finite"]:
        log.error("check %s: the %s has non-finite logits: FAILED", c["name"], c["candidate"])
        return
    log.info("check %s (%s vs %s): max |logit diff| %.3g (tolerance %.3g), mean %.3g; greedy next tokens "
             "agree at %d/%d positions: %s", c["name"], c["reference"], c["candidate"], c["max_abs_diff"],
             tolerance, c["mean_abs_diff"], c["greedy_agree"], c["greedy_total"],
             "PASSED" if c["passed"] else "FAILED")


def _transformers_logits_timed(hf_dir: str, ids: np.ndarray) -> np.ndarray:
    t = time.perf_counter()
    logits = transformers_logits(hf_dir, ids)
    log.info("check: transformers logits in %.1fs", time.perf_counter() - t)
    return logits


def _check_report(head: dict, tol: dict, ids: np.ndarray, comparisons: list[tuple]) -> dict:
    """The check report: `head` (direction, source, output, ...), the tolerance, the token ids, and a
    `compare_logits` entry, logged, per (name, reference logits, candidate logits, (what each is))."""
    report = {**head, **tol, "token_ids": ids.tolist(), "comparisons": []}
    for name, reference, candidate, what in comparisons:
        report["comparisons"].append(compare_logits(name, reference, candidate, tol["tolerance"], what))
        _log_comparison(report["comparisons"][-1], tol["tolerance"])
    return report


def _finish_check(report: dict, staging: str, out: str) -> dict:
    """Writes convert_check.json into `staging`; publishes it as `out`, or moves it aside and raises."""
    report["passed"] = all(c["passed"] for c in report["comparisons"])
    write_json(os.path.join(staging, CHECK_FILE), report)
    if report["passed"]:
        _publish(staging, out)
        return report
    failed = _reject(staging, out)
    worst = [c for c in report["comparisons"] if not c["passed"]]
    detail = "; ".join(c.get("error") or (f"{c['name']}: non-finite logits" if not c["finite"] else
                                          f"{c['name']}: max |logit diff| {c['max_abs_diff']:.4g} > tolerance "
                                          f"{report['tolerance']:.4g}, greedy agree {c['greedy_agree']}/"
                                          f"{c['greedy_total']}") for c in worst)
    raise CheckFailedError(f"logit check FAILED: the converted model does not reproduce its source ({detail}). "
                           f"Nothing was written to {out}; the rejected output and its {CHECK_FILE} are in "
                           f"{failed}")


# ------------------------------------------------------------------------------------------- directions
def _params_to_save(model, dtype: str):
    """The params tree to checkpoint, cast to `dtype` (kept as its own function so tests can corrupt it)."""
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x if x.dtype == target else x.astype(target), get_params(model))


def hf_to_run(hf_dir: str, run_dir: str, *, dtype: str = "float32", rope_layout: str = "half",
              scan_layers: bool = False, tokenizer: str | None = None, check: bool = True,
              check_with: str = "ours", check_tokens: int = 32, check_sequences: int = 3,
              atol: float | None = None, rtol: float | None = None, overwrite: bool = False,
              mesh=None) -> dict:
    """Converts a Hugging Face `LlamaForCausalLM` directory into a run directory; returns the check report
    (or a summary when `check` is False). `mesh`: the `jax.sharding.Mesh` the models are placed on (FSDP by
    the default rules), or None for the default device."""

    dtype = _dtype_option(dtype)
    _check_options(dtype, check_with, check_tokens, check_sequences)
    if rope_layout not in ("half", "interleaved"):
        raise ConvertError(f"--rope_layout must be 'half' or 'interleaved', got {rope_layout!r}")
    _require_hf_dir(hf_dir)
    src = os.path.abspath(hf_dir)
    out = _check_output(run_dir, [src] + ([tokenizer] if tokenizer else []), overwrite)
    try:
        cfg = ModelConfig.from_hf_config(src)
    except (KeyError, ValueError) as e:
        raise ConvertError(f"cannot read {os.path.join(src, 'config.json')} as a LlamaForCausalLM config: "
                           f"{type(e).__name__}: {e}") from e
    tok_source = tokenizer or src
    try:
        tok = load_tokenizer(tok_source)
    except (FileNotFoundError, ValueError) as e:
        raise ConvertError(f"no usable tokenizer for {src}: {e}. A run directory needs one: pass "
                           "--tokenizer=PATH (a tokenizer.json, a sentencepiece .model, or their directory)") from e
    check_tokenizer_fits(tok, cfg.vocab_size, what=f"model in {src}")
    log.info("converting %s -> %s: %d layers, d_model %d, vocab %d, %.3gB parameters, saved as %s",
             src, out, cfg.num_layers, cfg.d_model, cfg.vocab_size, cfg.num_params() / 1e9, dtype)

    t0 = time.perf_counter()
    try:
        model = load_hf(src, dtype="float32", param_dtype="float32", mesh=mesh, rules=DEFAULT_RULES,
                        scan_layers=scan_layers, rope_layout=rope_layout)
    except (OSError, ValueError, SafetensorError) as e:
        raise ConvertError(f"cannot read the Hugging Face model in {src}: {type(e).__name__}: {e}") from e
    log.info("loaded %s in %.1fs", src, time.perf_counter() - t0)
    ids: np.ndarray | None = None
    if check:
        ids = check_token_ids(tok, cfg.vocab_size, sequences=check_sequences,
                              tokens=min(check_tokens, model.config.max_seq_len))
        t = time.perf_counter()
        source_logits = model_logits(model, ids)
        log.info("check: source logits on %d x %d tokens in %.1fs", *ids.shape, time.perf_counter() - t)

    run_cfg = model.config.replace(dtype=dtype, param_dtype=dtype)
    staging_dir = _stage(out)
    staging: str | None = staging_dir  # None once published: nothing to clean up
    try:
        t = time.perf_counter()
        params = _params_to_save(model, dtype)
        del model
        meta = {"step": CHECKPOINT_STEP, "task": "convert", "model": run_cfg.to_dict(), "tokens_seen": 0,
                "converted_from": src}
        with Checkpointer(os.path.join(staging_dir, "checkpoints"), async_save=False, max_to_keep=None) as ckpt:
            ckpt.save(CHECKPOINT_STEP, {"params": params}, metadata=meta, force=True)
            ckpt.wait()
        del params
        log.info("wrote the params checkpoint (%s) in %.1fs", _gib(_dir_bytes(staging_dir)), time.perf_counter() - t)
        copied = []
        assert tok.path is not None  # a tokenizer loaded from files
        for file, name in _tokenizer_files(tok.path):
            shutil.copyfile(file, os.path.join(staging_dir, name))
            copied.append(name)
        if "tokenizer.json" in copied and os.path.isfile(os.path.join(tok_source, "tokenizer.model")):
            log.info("%s also has a tokenizer.model; not copied, since the project loads its tokenizer.json",
                     tok_source)
        log.info("copied the tokenizer: %s", ", ".join(copied))

        def run_config(root: str) -> dict:
            # A tokenizer.model in the run directory is found by load_run; a tokenizer.json is named in config.
            tok_path = os.path.join(root, "tokenizer.json") if "tokenizer.json" in copied else None
            return {"model": run_cfg.to_dict(), "tokenizer": {"path": tok_path},
                    "convert": {"from_hf": src, "dtype": dtype, "rope_layout": rope_layout,
                                "tokenizer_source": tok.path, "tokenizer_files": copied, "step": CHECKPOINT_STEP}}

        write_json(os.path.join(staging_dir, "config.json"), run_config(staging_dir))
        if not check:
            write_json(os.path.join(staging_dir, "config.json"), run_config(out))
            _publish(staging_dir, out)
            staging = None
            log.info("wrote run directory %s (logit check skipped)", out)
            return {"output": out, "checked": False}
        assert ids is not None  # made above when checking

        t = time.perf_counter()
        converted, _ = load_run(staging_dir, mesh=mesh, rules=DEFAULT_RULES, dtype="float32")
        converted_logits = model_logits(converted, ids)
        del converted
        log.info("check: read back the run directory and ran it in %.1fs", time.perf_counter() - t)
        head = {"direction": "hf_to_run", "source": src, "output": out, "dtype": dtype}
        comparisons = [("ours", source_logits, converted_logits,
                        ("source Hugging Face weights (dsmath_jax)", "converted run directory (dsmath_jax)"))]
        if check_with == "transformers":
            if rope_layout != "half":
                log.warning("check transformers: skipped, %s stores q/k in the interleaved rotary layout, which "
                            "transformers' Llama does not use", src)
                head["transformers_skipped"] = "source is in the interleaved rotary layout"
            else:
                comparisons.append(("transformers", _transformers_logits_timed(src, ids), converted_logits,
                                    ("source (transformers LlamaForCausalLM)", "converted run directory (dsmath_jax)")))
        report = _check_report(head, _tolerance(dtype, atol, rtol, float(np.abs(source_logits).max())), ids,
                               comparisons)
        write_json(os.path.join(staging_dir, "config.json"), run_config(out))
        report = _finish_check(report, staging_dir, out)
        staging = None
        log.info("wrote run directory %s", out)
        return report
    finally:
        if staging is not None and os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def run_to_hf(run_dir: str, hf_dir: str, *, step: int | None = None, dtype: str | None = None,
              check: bool = True, check_with: str = "ours", check_tokens: int = 32, check_sequences: int = 3,
              atol: float | None = None, rtol: float | None = None, overwrite: bool = False,
              mesh=None) -> dict:
    """Exports a run directory's checkpoint (latest, or `step`) as a Hugging Face `LlamaForCausalLM` directory;
    returns the check report (or a summary when `check` is False). `mesh` as in `hf_to_run`."""

    dtype = None if dtype is None else _dtype_option(dtype)
    _check_options(dtype or "float32", check_with, check_tokens, check_sequences)
    _require_run_dir(run_dir)
    src = os.path.abspath(run_dir)
    out = _check_output(hf_dir, [src], overwrite)
    t0 = time.perf_counter()
    model, tok = load_run(src, mesh=mesh, rules=DEFAULT_RULES, step=step, dtype="float32")
    cfg = model.config
    dtype = dtype or cfg.param_dtype
    log.info("converting %s (step %s) -> %s: %d layers, d_model %d, vocab %d, %.3gB parameters, saved as %s; "
             "loaded in %.1fs", src, "latest" if step is None else step, out, cfg.num_layers, cfg.d_model,
             cfg.vocab_size, cfg.num_params() / 1e9, dtype, time.perf_counter() - t0)
    ids: np.ndarray | None = None
    if check:
        ids = check_token_ids(tok, cfg.vocab_size, sequences=check_sequences,
                              tokens=min(check_tokens, cfg.max_seq_len))
        t = time.perf_counter()
        source_logits = model_logits(model, ids)
        log.info("check: source logits on %d x %d tokens in %.1fs", *ids.shape, time.perf_counter() - t)

    staging_dir = _stage(out)
    staging: str | None = staging_dir  # None once published: nothing to clean up
    try:
        t = time.perf_counter()
        save_hf(model, staging_dir, dtype=dtype)
        del model
        log.info("wrote safetensors (%s) in %.1fs", _gib(_dir_bytes(staging_dir)), time.perf_counter() - t)
        copied = []
        assert tok.path is not None  # a tokenizer loaded from files
        for file, name in _tokenizer_files(tok.path):
            shutil.copyfile(file, os.path.join(staging_dir, name))
            copied.append(name)
        if "tokenizer.model" in copied and "tokenizer_config.json" not in copied:
            write_json(os.path.join(staging_dir, "tokenizer_config.json"), _sentencepiece_tokenizer_config(tok, cfg))
            copied.append("tokenizer_config.json")
        log.info("copied the tokenizer: %s", ", ".join(copied))
        _fill_special_ids(os.path.join(staging_dir, "config.json"), tok)
        if not check:
            _publish(staging_dir, out)
            staging = None
            log.info("wrote Hugging Face directory %s (logit check skipped)", out)
            return {"output": out, "checked": False}
        assert ids is not None  # made above when checking

        t = time.perf_counter()
        converted = load_hf(staging_dir, dtype="float32", param_dtype="float32", mesh=mesh, rules=DEFAULT_RULES)
        load_tokenizer(staging_dir)  # the copied tokenizer loads
        converted_logits = model_logits(converted, ids)
        del converted
        log.info("check: read back the Hugging Face directory and ran it in %.1fs", time.perf_counter() - t)
        comparisons = [("ours", source_logits, converted_logits,
                        ("source run checkpoint (dsmath_jax)", "converted Hugging Face weights (dsmath_jax)"))]
        if check_with == "transformers":
            comparisons.append(("transformers", source_logits, _transformers_logits_timed(staging_dir, ids),
                                ("source run checkpoint (dsmath_jax)", "converted (transformers LlamaForCausalLM)")))
        report = _check_report({"direction": "run_to_hf", "source": src, "step": step, "output": out, "dtype": dtype},
                               _tolerance(dtype, atol, rtol, float(np.abs(source_logits).max())), ids, comparisons)
        report = _finish_check(report, staging_dir, out)
        staging = None
        log.info("wrote Hugging Face directory %s", out)
        return report
    finally:
        if staging is not None and os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _sentencepiece_tokenizer_config(tok, cfg) -> dict:
    """A tokenizer_config.json naming the special tokens of a sentencepiece model for Hugging Face tooling."""
    def piece(i):
        return None if i is None else tok.id_to_token(i)

    unk = tok.sp.unk_id() if hasattr(tok, "sp") else None
    return {"tokenizer_class": "LlamaTokenizer", "bos_token": piece(tok.bos_id), "eos_token": piece(tok.eos_id),
            "unk_token": piece(unk if unk is not None and unk >= 0 else None), "pad_token": piece(tok._pad_id),
            "add_bos_token": tok.bos_id is not None, "add_eos_token": False, "model_max_length": cfg.max_seq_len}


def _fill_special_ids(config_path: str, tok) -> None:
    """Fills bos/eos/pad token ids the model config leaves unset from the tokenizer (generation needs eos)."""
    with open(config_path, encoding="utf-8") as f:
        hf = json.load(f)
    changed = False
    for name in ("bos", "eos", "pad"):
        value = getattr(tok, f"{name}_id") if name != "pad" else tok._pad_id
        if hf.get(f"{name}_token_id") is None and value is not None:
            hf[f"{name}_token_id"] = int(value)
            changed = True
    if changed:
        write_json(config_path, hf)


def _dtype_option(dtype) -> str:
    """A dtype given as a name or a dtype object (`jnp.bfloat16`), as its name."""
    try:
        return dtype_name(dtype)
    except ConfigError as e:
        raise ConvertError(f"--dtype must be one of {DTYPE_CHOICES}, got {dtype!r}") from e


def _check_options(dtype: str, check_with: str, check_tokens: int, check_sequences: int) -> None:
    if dtype not in DTYPE_CHOICES:
        raise ConvertError(f"--dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if check_with not in ("ours", "transformers"):
        raise ConvertError(f"--check_with must be 'ours' or 'transformers', got {check_with!r}")
    if check_with == "transformers" and not transformers_available():
        raise ConvertError("--check_with=transformers needs torch and transformers, which are not installed "
                           "(pip install torch transformers), or use --check_with=ours")
    if check_tokens < 1 or check_sequences < 1:
        raise ConvertError("--check_tokens and --check_sequences must be >= 1")
