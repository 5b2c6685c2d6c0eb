"""Test set-up: 8 fake CPU devices (before JAX is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real benchmark files and few-shot exemplars (../shared/data beside the checkout)."""
    path = pathlib.Path(os.environ.get("DSMATH_SHARED_DATA", SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"benchmark data directory {path} not found (set DSMATH_SHARED_DATA)")
    return path


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
