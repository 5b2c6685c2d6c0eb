"""dsmath_jax: DeepSeekMath (arXiv 2402.03300) end to end in JAX/Flax NNX."""

from setuptools import find_packages, setup

# Ranges are the ones tested on CPU (Linux, Python 3.10-3.12); upper bounds guard against the
# fast-moving NNX / Orbax APIs.
INSTALL_REQUIRES = [
    "jax>=0.8,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11.30,<0.13",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1",
    "numpy>=1.26",
    "ml_dtypes>=0.5",
    "safetensors>=0.4.5",
    "sentencepiece>=0.2.0",
    "tokenizers>=0.20",
    "tqdm>=4.66",
    # Data: TFDS writes and reads ArrayRecord without TensorFlow; Grain builds the input pipelines.
    "tensorflow-datasets>=4.9.7,<5",
    "grain>=0.2.12,<0.3",
    "array-record>=0.7",
    "pyarrow>=15",
    "etils[epath]>=1.7",
    "tensorboardX>=2.6",
    "importlib_resources>=6",  # tensorflow-datasets imports it when preparing a dataset
    # Answer checking: math-verify (with its LaTeX parser) and sympy.
    "math-verify[antlr4_13_2]>=0.8,<0.10",
    "sympy>=1.13,<2",
    # The DeepSeek-Math tool loop runs programs under this alarm as their harness does; pinned because the
    # tracebacks shown to the model name its source lines (evals/deepseek/tool.py).
    "timeout-decorator==0.5.0",
]

BEAM = [
    "apache-beam>=2.77,<3",
    "fasttext-numpy2>=0.10.4,<0.11",
    "warcio>=1.8,<2",
    "resiliparse>=2.0,<3",
]

# What the notebooks (notebooks/*.ipynb, dsmath_jax/analysis/) need to run, and tests/test_notebooks.py to
# execute them headless.
NOTEBOOKS = [
    "matplotlib>=3.8,<4",
    "nbformat>=5.9,<6",
    "nbclient>=0.10,<1",
    "ipykernel>=6.29,<8",
]

EXTRAS_REQUIRE = {
    # torch is pinned: it is the CPU build used only for parity tests against `transformers`;
    # any other torch spec pulls gigabytes of CUDA packages.
    "test": [
        # pytest 9.2 made node ids structured, and pytest-xdist (3.8) then silently stops grouping tests by
        # `xdist_group` under --dist=loadgroup (pytest-dev/pytest-xdist#1386); the suite relies on groups to
        # build each expensive module fixture once.
        "pytest>=8,<9.2",
        "pytest-xdist>=3.5",
        "torch==2.13.0",
        "transformers>=4.46,<6",
        "scipy>=1.11",
        "psutil>=5.9",
        # Lint and type checks (.ci/run runs both before the tests; configuration in pyproject.toml).
        "ruff>=0.17,<0.18",
        "mypy>=2.4,<3",
        # libtpu: compile-only plans for TPU topologies (tests/test_plan.py, the splash-attention lowering);
        # on a machine without a TPU it only provides the compiler.
        "jax[tpu]>=0.8,<0.11",
    ] + BEAM + NOTEBOOKS,  # the mining tests run the real Beam pipeline; the notebooks are executed
    "beam": BEAM,
    "notebooks": ["jupyter>=1.0"] + NOTEBOOKS,
    # `--workdir=gs://...` (metrics, configs, summaries, tokenizers through etils.epath) needs gcsfs; it also
    # brings google-cloud-storage, which TensorBoard event files on gs:// use. Not in the core deps: ~20 packages.
    "tpu": ["jax[tpu]>=0.8,<0.11", "etils[epath-gcs]>=1.7"],
    "gpu": ["jax[cuda12]>=0.8,<0.11", "etils[epath-gcs]>=1.7"],
}

setup(
    name="dsmath_jax",
    version="0.1.0",
    description="DeepSeekMath reproduced end to end in JAX/Flax: corpus mining, pre-training, SFT, GRPO, evaluation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dsmath_jax", "dsmath_jax.*"]),
    include_package_data=True,
    package_data={"dsmath_jax": ["py.typed", "evals/few_shot/*.txt", "evals/few_shot/README.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["dsmath=dsmath_jax.cli:main"]},
)
