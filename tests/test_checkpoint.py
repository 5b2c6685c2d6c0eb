import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsmath_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    abstract_like,
    restore_params,
)

# A failed tensorstore read leaves a callback on Orbax's closed event loop; Python reports it
# later as an "unraisable" RuntimeError('Event loop is closed'). It is noise, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.emb = nnx.Embed(16, 8, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
        self.norm = nnx.RMSNorm(8, rngs=rngs)


def _params() -> dict:
    params = nnx.to_pure_dict(nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param))
    k = jax.random.key(1)
    params["bf16"] = {
        "w": jax.random.normal(k, (4, 6), jnp.bfloat16),
        "v": jax.random.normal(k, (5,), jnp.bfloat16),
    }
    return params


def _opt_state(params: dict):
    opt = optax.adamw(1e-2)
    state = opt.init(params)
    for i in range(2):  # two real updates so mu/nu/count are non-trivial
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (i + 1)), params)  # noqa: B023 - mapped at once
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return state


def _assert_tree_equal(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_simple(directory, steps=(1,), **kw) -> dict:
    params = _params()
    with Checkpointer(directory, async_save=False, **kw) as ckpt:
        for s in steps:
            ckpt.save(s, {"params": jax.tree.map(lambda x: x + s, params)}, metadata={"s": s})  # noqa: B023
    return params


def test_round_trip_is_bitwise(tmp_path):
    params = _params()
    opt_state = _opt_state(params)
    rng = jax.random.split(jax.random.key(0), 4)
    meta = {"config": {"lr": 1e-2, "layers": [1, 2]}, "name": "run"}
    items = {"params": params, "opt_state": opt_state, "rng": {"train": rng, "step": 7}}
    with Checkpointer(tmp_path / "run") as ckpt:  # async by default
        assert ckpt.save(100, items, metadata=meta)
        ckpt.wait()
        assert ckpt.all_steps() == [100]
        targets = {n: abstract_like(t) for n, t in items.items()}
        out = ckpt.restore(targets=targets)
        assert ckpt.metadata() == meta
        assert ckpt.item_names() == ["opt_state", "params", "rng"]
    assert out["step"] == 100 and out["metadata"] == meta
    _assert_tree_equal(out["params"], params)
    assert out["params"]["bf16"]["w"].dtype == jnp.bfloat16
    _assert_tree_equal(out["opt_state"], opt_state)
    assert int(out["opt_state"][0].count) == 2
    key = out["rng"]["train"]
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    assert str(jax.random.key_impl(key)) == str(jax.random.key_impl(rng))
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(rng))
    assert out["rng"]["step"] == 7
    # Without targets every item comes back as saved, with containers as Orbax rebuilds them
    # (dict keys become str, namedtuples dicts, tuples lists); leaves are equal, keys rewrapped.
    with Checkpointer(tmp_path / "run") as ckpt:
        raw = ckpt.restore(100)
    assert set(raw["params"]["layers"]) == {"0", "1"}
    _assert_tree_equal(jax.tree.leaves(raw["params"]), jax.tree.leaves(params))
    _assert_tree_equal(jax.tree.leaves(raw["opt_state"]), jax.tree.leaves(opt_state))
    np.testing.assert_array_equal(jax.random.key_data(raw["rng"]["train"]),
                                  jax.random.key_data(rng))


def test_a_relative_run_directory_is_saved_and_restored(tmp_path, monkeypatch):
    """A run directory given relative to the working directory (as `--workdir runs/x` or a script passes it):
    orbax's writers need absolute paths, so the checkpointer resolves it; the checkpoint lands under it."""
    monkeypatch.chdir(tmp_path)
    params = _save_simple("runs/rel", steps=(3,))
    assert (tmp_path / "runs" / "rel" / "3").is_dir()
    with Checkpointer("runs/rel") as ckpt:
        out = ckpt.restore(targets={"params": abstract_like(params)})
    assert out["step"] == 3
    _assert_tree_equal(out["params"], jax.tree.map(lambda x: x + 3, params))


def test_keep_last_n_and_interval(tmp_path):
    params = _save_simple(tmp_path, steps=range(1, 6), max_to_keep=2)
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
        out = ckpt.restore(targets={"params": abstract_like(params)})
    assert out["step"] == 5 and out["metadata"] == {"s": 5}
    _assert_tree_equal(out["params"], jax.tree.map(lambda x: x + 5, params))
    with Checkpointer(tmp_path / "iv", save_interval_steps=2, async_save=False) as ckpt:
        assert ckpt.save(1, {"x": np.arange(3)})  # Orbax always saves the first step of a run
        assert not ckpt.save(3, {"x": np.arange(3)})
        assert ckpt.save(3, {"x": np.arange(3)}, force=True)
        assert ckpt.save(4, {"x": np.arange(3)})
        assert ckpt.all_steps() == [1, 3, 4]


def test_cross_mesh_restore(tmp_path):
    mesh8 = jax.make_mesh((8,), ("fsdp",))
    mesh24 = jax.make_mesh((2, 4), ("fsdp", "tensor"))
    rng = np.random.default_rng(0)
    host = {"w": rng.standard_normal((16, 8), np.float32),
            "e": rng.standard_normal((8, 32)).astype(jnp.bfloat16),
            "b": rng.standard_normal((8,), np.float32)}
    specs8 = {"w": P("fsdp", None), "e": P(None, "fsdp"), "b": P("fsdp")}
    params = {k: jax.device_put(v, NamedSharding(mesh8, specs8[k])) for k, v in host.items()}
    assert len(params["w"].sharding.device_set) == 8
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"params": params})
    shardings = {"w": NamedSharding(mesh24, P("fsdp", "tensor")),
                 "e": NamedSharding(mesh24, P("fsdp", "tensor")),
                 "b": NamedSharding(mesh24, P("tensor"))}
    target = abstract_like(params, shardings)
    out = restore_params(tmp_path, target)
    for k, v in host.items():
        assert out[k].sharding == shardings[k]
        assert out[k].dtype == v.dtype
        np.testing.assert_array_equal(np.asarray(out[k]), v)


def test_params_only_restore(tmp_path):
    params = _params()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, {"params": params, "opt_state": _opt_state(params)}, metadata={"a": 1})
        ckpt.save(9, {"params": jax.tree.map(lambda x: x * 2, params),
                      "opt_state": _opt_state(params)})
    _assert_tree_equal(restore_params(tmp_path, abstract_like(params), step=3), params)
    _assert_tree_equal(restore_params(tmp_path, params), jax.tree.map(lambda x: x * 2, params))
    # the opt_state item is not needed: remove it entirely and params still restore
    import shutil

    shutil.rmtree(tmp_path / "3" / "opt_state")
    _assert_tree_equal(restore_params(tmp_path, params, step=3), params)


def test_missing_and_empty_dirs(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="no checkpoint in .*nope"):
        restore_params(missing, {"w": np.zeros(2)})
    assert not missing.exists()  # restoring never creates the directory
    with Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        with pytest.raises(CheckpointError, match="no checkpoint in .*empty.*Checkpointer.save"):
            ckpt.restore()


def test_missing_step_lists_available(tmp_path):
    _save_simple(tmp_path, steps=(2, 4))
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 3 .*available steps: \[2, 4\]"):
            ckpt.restore(3)
        with pytest.raises(CheckpointError, match="'opt_state' of step 4.*saved items"):
            ckpt.restore(4, targets={"opt_state": None})


def _data_files(item_dir):
    files = []
    for root, _, names in os.walk(item_dir):
        if os.path.basename(root) == "d":  # OCDBT data files: <item>/d/, <item>/ocdbt.process_*/d/
            files += [os.path.join(root, n) for n in names]
    assert files
    return files


@pytest.mark.parametrize("damage", ["garbage", "truncate", "metadata_file", "manifest"])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, damage):
    params = _save_simple(tmp_path, steps=(7,))
    item_dir = tmp_path / "7" / "params"
    if damage == "garbage":
        for f in _data_files(item_dir):
            size = os.path.getsize(f)
            with open(f, "wb") as fh:
                fh.write(np.random.default_rng(0).bytes(max(size, 64)))
    elif damage == "truncate":
        for f in _data_files(item_dir):
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 3)
    elif damage == "metadata_file":
        os.remove(item_dir / "_METADATA")
    else:
        for root, _, names in os.walk(item_dir):
            for n in names:
                if n == "manifest.ocdbt":
                    os.remove(os.path.join(root, n))
    with pytest.raises(CheckpointError, match="'params' of step 7") as info:
        restore_params(tmp_path, abstract_like(params))
    assert str(tmp_path) in str(info.value)
    assert info.value.__cause__ is not None  # original Orbax/tensorstore error is chained
    assert not isinstance(info.value.__cause__, CheckpointError)
    # Without a target there is no metadata check first: the Orbax read itself fails, same error.
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="'params' of step 7") as info:
            ckpt.restore(targets={"params": None})
    assert info.value.__cause__ is not None


def test_missing_item_dir_and_bad_targets(tmp_path):
    params = _save_simple(tmp_path, steps=(1, 2))
    import shutil

    shutil.rmtree(tmp_path / "2" / "params")
    with pytest.raises(CheckpointError, match="'params' of step 2.*missing"):
        restore_params(tmp_path, params)
    bad = abstract_like(params)
    bad["layers"][1]["kernel"] = jax.ShapeDtypeStruct((8, 9), jnp.float32)
    with pytest.raises(CheckpointError, match=r"key path \['layers'\]\[1\]\['kernel'\].*shape"):
        restore_params(tmp_path, bad, step=1)
    bad = abstract_like(params)
    bad["bf16"]["w"] = jax.ShapeDtypeStruct((4, 6), jnp.float32)
    with pytest.raises(CheckpointError, match=r"\['bf16'\]\['w'\].*dtype"):
        restore_params(tmp_path, bad, step=1)
    bad = abstract_like(params)
    bad["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    with pytest.raises(CheckpointError, match=r"\['extra'\]"):
        restore_params(tmp_path, bad, step=1)
    bad = abstract_like(params)
    del bad["norm"]
    with pytest.raises(CheckpointError, match="norm/scale"):
        restore_params(tmp_path, bad, step=1)


def test_reserved_names(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        for name in ("metadata", "step"):
            with pytest.raises(ValueError, match="reserved"):
                ckpt.save(1, {name: np.zeros(2)})
        with pytest.raises(ValueError, match="reserved"):
            ckpt.save(1, {"x": np.zeros(2)}, metadata={"_checkpointer": 1})
        assert ckpt.all_steps() == []


def test_partial_save_is_ignored(tmp_path):
    params = _save_simple(tmp_path, steps=(1, 2))
    # What an interrupted save leaves behind: Orbax writes into "<step>.orbax-checkpoint-tmp"
    # (older versions append "-<timestamp>") and renames it to "<step>" only once complete.
    for name in ("3.orbax-checkpoint-tmp", "4.orbax-checkpoint-tmp-1700000000"):
        part = tmp_path / name / "params"
        part.mkdir(parents=True)
        (part / "_METADATA").write_text("{")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
        out = ckpt.restore(targets={"params": params})
        assert out["step"] == 2
        with pytest.raises(CheckpointError, match=r"available steps: \[1, 2\]"):
            ckpt.restore(3)
    _assert_tree_equal(out["params"], jax.tree.map(lambda x: x + 2, params))
