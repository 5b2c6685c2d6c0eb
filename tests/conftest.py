"""Test set-up: 8 fake CPU devices (before JAX is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the session, shared by the xdist workers (they inherit the variable from
# the controller, which imports this file first) and the command-line runs they start: the many tiny models,
# samplers and train steps built with the same shapes compile once. Results do not change (a cached executable
# is the compiled program itself); a directory set by the caller is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dsmath_jax_compile_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real benchmark files and few-shot exemplars (../shared/data beside the checkout)."""
    path = pathlib.Path(os.environ.get("DSMATH_SHARED_DATA", SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"benchmark data directory {path} not found (set DSMATH_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, shared_data):
    """A 512-token sentencepiece model of 1,500 GSM8K training problems (the sampler and engine tests)."""
    import json

    from dsmath_jax.data.tokenizers import train_sentencepiece
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "gsm8k" / "train.jsonl").open()][:1500]
    return train_sentencepiece([f"{r['question']}\n{r['answer']}" for r in rows],
                               tmp_path_factory.mktemp("tok") / "spm", vocab_size=512)


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    skip_gpu = pytest.mark.skip(reason="needs a GPU: run with -m gpu")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def arithmetic_sft_run(tmp_path_factory) -> str:
    """A tiny SFT policy on the arithmetic task (configs/sft/arithmetic.py:tiny, fewer steps), trained once
    per test session and shared by the xdist workers (a file lock; the run directory resumes/no-ops)."""
    import fcntl

    basetemp = tmp_path_factory.getbasetemp()
    # Under xdist every worker's basetemp is a child of the session's; without it basetemp is the session's.
    root = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    workdir = root / "arithmetic_sft"
    with open(root / "arithmetic_sft.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "summary.json").exists():
            from dsmath_jax.train.loop import train
            config = load_config("configs/sft/arithmetic.py:tiny")
            config.train.update(steps=ARITHMETIC_SFT_STEPS, tensorboard=False, async_checkpoint=False)
            train(config, str(workdir), task="sft")
        fcntl.flock(lock, fcntl.LOCK_UN)
    return str(workdir)


ARITHMETIC_SFT_STEPS = 450  # configs/sft/arithmetic.py:tiny as it is
REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(spec: str):
    """A config file of the repository as the CLI loads it: "configs/x.py[:arg]" -> ConfigDict."""
    import importlib.util
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


class CharTokenizer:
    """One token per character (ids = code points), so step ends are easy to hand-work."""

    bos_id, eos_id, pad_id, vocab_size = None, None, 0, 256

    def encode(self, text, add_bos=False, add_eos=False):  # noqa: ARG002 - the tokenizer interface
        return [ord(ch) for ch in text]

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 - the tokenizer interface
        return "".join(chr(i) for i in ids)
