"""Meshes, logical-axis rules, sharded forward/train steps, multi-host helpers, cross-mesh resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsmath_jax.model import CausalLM, get_params, get_preset, set_params
from dsmath_jax.parallel import (
    DEFAULT_RULES,
    batch_sharding,
    create_sharded,
    global_batch,
    initialize,
    initialize_from_config,
    logical_to_spec,
    make_mesh,
    param_shardings,
    rules_from_config,
    shard_model,
)
from dsmath_jax.train.checkpoint import Checkpointer, abstract_like
from dsmath_jax.train.step import adamw, make_train_step

TINY = get_preset("tiny")


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape, sizes", [
    (None, (1, 8, 1)), ({"fsdp": -1}, (1, 8, 1)), ({"fsdp": 2, "tensor": 4}, (1, 2, 4)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)), ({"data": -1}, (8, 1, 1)),
])
def test_make_mesh(shape, sizes):
    mesh = make_mesh(shape)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == sizes


@pytest.mark.parametrize("shape, message", [
    ({"fsdp": 3}, "needs 3 devices"), ({"fsdp": -1, "tensor": -1}, "at most one -1"),
    ({"model": 2}, "unknown mesh axes"), ({"fsdp": -1, "tensor": 3}, "not divisible by 3"),
])
def test_bad_meshes(shape, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(shape)


def test_logical_to_spec():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    assert logical_to_spec(("embed", "q_heads", "head_dim")) == P("fsdp", "tensor", None)
    assert logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
    # 6 heads do not split over 4 tensor shards: replicated over `tensor`, still sharded over `fsdp`.
    assert logical_to_spec(("embed", "q_heads", "head_dim"), shape=(64, 6, 8), mesh=mesh) == P("fsdp", None, None)
    # A mesh axis is used once per array.
    rules = rules_from_config([("embed", "fsdp"), ("mlp", "fsdp")])
    assert logical_to_spec(("embed", "mlp"), rules) == P("fsdp", None)
    with pytest.raises(KeyError, match="logical axis 'experts' has no rule"):
        logical_to_spec(("experts",))
    with pytest.raises(ValueError, match="unknown mesh axes \\['model'\\]"):
        rules_from_config({"embed": "model"})


def test_params_are_placed_by_logical_names():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = create_sharded(lambda: CausalLM(TINY, rngs=nnx.Rngs(0)), mesh)
    params = get_params(model)
    layer = params["decoder"]["layers"][0]
    assert layer["attn"]["q_proj"].sharding.spec == P("fsdp", "tensor", None)
    assert layer["attn"]["o_proj"].sharding.spec == P("tensor", None, "fsdp")
    assert layer["mlp"]["down_proj"].sharding.spec == P("tensor", "fsdp")
    assert params["decoder"]["embed"].sharding.spec == P("tensor", "fsdp")
    assert params["lm_head"].sharding.spec == P("fsdp", "tensor")
    assert layer["attn_norm"]["scale"].sharding.spec == P(None)
    # Each device holds 1/8 of a fully sharded matrix.
    q = layer["attn"]["q_proj"]
    assert q.addressable_shards[0].data.shape == (32, 2, 8)
    # Created in place from the same seed: the same values as an unsharded init.
    plain = get_params(CausalLM(TINY, rngs=nnx.Rngs(0)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7), plain, params)


def test_scanned_params_shard_with_a_layers_axis():
    mesh = make_mesh({"fsdp": 8})
    model = create_sharded(lambda: CausalLM(TINY.replace(scan_layers=True), rngs=nnx.Rngs(0)), mesh)
    q = get_params(model)["decoder"]["layers"]["attn"]["q_proj"]
    assert q.shape == (2, 64, 8, 8) and tuple(q.sharding.spec[:2]) == (None, "fsdp")
    assert q.addressable_shards[0].data.shape == (2, 8, 8, 8)


def sharded_logits(mesh_shape, params, ids):
    model = CausalLM(TINY, rngs=nnx.Rngs(0))
    set_params(model, params)
    if mesh_shape is None:
        return np.asarray(model(ids))
    mesh = make_mesh(mesh_shape)
    shard_model(model, mesh)
    graphdef, state = nnx.split(model)
    shardings = param_shardings(model, mesh)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x), in_shardings=(shardings, batch_sharding(mesh)),
                      out_shardings=NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
    out = forward(get_params(model), jax.device_put(ids, batch_sharding(mesh)))
    assert out.sharding.spec == P(("data", "fsdp"), None, "tensor")
    return np.asarray(out)


def test_forward_agrees_across_meshes():
    params = get_params(CausalLM(TINY, rngs=nnx.Rngs(0)))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 24)), jnp.int32)
    single = sharded_logits(None, params, ids)
    for shape in ({"fsdp": 8}, {"fsdp": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2}):
        np.testing.assert_allclose(sharded_logits(shape, params, ids), single, atol=2e-5, err_msg=str(shape))


def make_batches(n, batch=8, seq=32, seed=0):
    """A learnable stream: random first tokens, then x -> (5x + 3) mod 256 (a bigram rule)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = np.empty((batch, seq + 1), np.int64)
        toks[:, 0] = rng.integers(0, 256, batch)
        for t in range(seq):
            toks[:, t + 1] = (5 * toks[:, t] + 3) % 256
        out.append({"inputs": toks[:, :-1].astype(np.int32), "targets": toks[:, 1:].astype(np.int32),
                    "weights": np.ones((batch, seq), np.float32)})
    return out


def test_adamw_steps_on_the_mesh_lower_the_loss():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = create_sharded(lambda: CausalLM(TINY, rngs=nnx.Rngs(0)), mesh)
    init_state, train_step, _, shardings, _ = make_train_step(model, adamw(1e-2), mesh)
    state = init_state(get_params(model))
    mu = state.opt_state[1][0].mu["decoder"]["layers"][0]["attn"]["q_proj"]
    assert mu.sharding.spec == P("fsdp", "tensor", None)  # optimizer state is sharded like the params
    losses = []
    for batch in make_batches(30):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[0] > np.log(256) - 0.5  # starts near uniform
    assert np.mean(losses[-5:]) < losses[0] - 3.0, losses
    assert int(state.step) == 30


def test_train_state_resumes_exactly_on_another_mesh(tmp_path):
    """Save a train state on 8-way fsdp, restore onto 2x4 fsdp x tensor, continue: same losses as an
    uninterrupted run."""
    batches = make_batches(6, seed=1)
    mesh_a = make_mesh({"fsdp": 8})
    model = create_sharded(lambda: CausalLM(TINY, rngs=nnx.Rngs(0)), mesh_a)
    init_a, step_a, *_ = make_train_step(model, adamw(3e-3), mesh_a)
    state = init_a(get_params(model))
    for batch in batches[:3]:
        state, _ = step_a(state, batch)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(3, {"params": state.params, "opt_state": state.opt_state}, metadata={"mesh": "fsdp8"})
        ckpt.wait()
    reference = []
    for batch in batches[3:]:
        state, metrics = step_a(state, batch)
        reference.append(float(metrics["loss"]))

    mesh_b = make_mesh({"fsdp": 2, "tensor": 4})
    model_b = create_sharded(lambda: CausalLM(TINY, rngs=nnx.Rngs(5)), mesh_b)
    init_b, step_b, _, shardings_b, _ = make_train_step(model_b, adamw(3e-3), mesh_b)
    template = jax.eval_shape(init_b, get_params(model_b))
    targets = {"params": abstract_like(template.params, shardings_b.params),
               "opt_state": abstract_like(template.opt_state, shardings_b.opt_state)}
    restored = Checkpointer(tmp_path / "ckpt").restore(targets=targets)
    assert restored["step"] == 3 and restored["metadata"]["mesh"] == "fsdp8"
    q = restored["params"]["decoder"]["layers"][0]["attn"]["q_proj"]
    assert q.sharding == shardings_b.params["decoder"]["layers"][0]["attn"]["q_proj"]
    state_b = type(state)(step=jnp.asarray(3, jnp.int32), params=restored["params"],
                          opt_state=restored["opt_state"])
    resumed = []
    for batch in batches[3:]:
        state_b, metrics = step_b(state_b, batch)
        resumed.append(float(metrics["loss"]))
    np.testing.assert_allclose(resumed, reference, rtol=1e-5)


def test_global_batch_from_host_data():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    local = {"inputs": np.arange(8 * 5).reshape(8, 5).astype(np.int32)}
    batch = global_batch(local, batch_sharding(mesh))
    assert batch["inputs"].shape == (8 * jax.process_count(), 5)
    assert batch["inputs"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(batch["inputs"]), local["inputs"])


def test_distributed_start_up_is_a_no_op_on_one_host(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                 "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert initialize() is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host TPU VM
    assert initialize_from_config({"enabled": "auto", "timeout_s": 5}) is False
    with pytest.raises(ValueError, match="unknown key"):
        initialize_from_config({"timeout": 5})
    with pytest.raises(ValueError, match="enabled"):
        initialize(enabled="sometimes")


def test_default_rules_cover_every_parameter_axis():
    model = nnx.eval_shape(lambda: CausalLM(TINY.replace(scan_layers=True), rngs=nnx.Rngs(0)))
    names = {name for name, _ in DEFAULT_RULES}
    from dsmath_jax.parallel import logical_axes
    used = set(jax.tree.leaves(logical_axes(model), is_leaf=lambda x: isinstance(x, tuple)))
    flat = {a for axes in jax.tree.leaves(logical_axes(model), is_leaf=lambda x: isinstance(x, tuple))
            for a in axes}
    assert used and flat <= names


def test_activation_constraints_follow_the_rules():
    from dsmath_jax.parallel import activation_sharding, constrain

    x = jnp.ones((8, 4, 64))
    assert constrain(x, ("batch", "length", "act_embed")) is x  # no mesh context: the identity
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = create_sharded(lambda: CausalLM(TINY, rngs=nnx.Rngs(0)), mesh)
    graphdef, _ = nnx.split(model)

    def forward(params, ids):
        with activation_sharding(mesh):
            return nnx.merge(graphdef, params)(ids)

    ids = jax.device_put(jnp.zeros((8, 16), jnp.int32), batch_sharding(mesh))
    out = jax.jit(forward)(get_params(model), ids)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")), 3)
    assert out.addressable_shards[0].data.shape == (4, 16, 64)
    hlo = jax.jit(forward).lower(get_params(model), ids).as_text()
    assert hlo.count("sharding_constraint") >= 2 * TINY.num_layers or hlo.count("Sharding") >= 2 * TINY.num_layers


# ------------------------------------------------------------------- multi-host detection on Cloud TPU VMs
def _clear_multi_host_env(monkeypatch):
    from dsmath_jax.parallel import distributed
    for name in distributed._MULTI_HOST_ENV + ("TPU_SKIP_MDS_QUERY",):
        monkeypatch.delenv(name, raising=False)


def test_auto_start_up_finds_the_hosts_of_a_cloud_tpu_vm_in_the_metadata_server(monkeypatch):
    """A TPU pod slice VM sets no multi-host variable: its hosts come from the metadata server, as in
    jax's GceTpuCluster (worker-network-endpoints, tpu-env's MEGASCALE_NUM_SLICES)."""
    from dsmath_jax.parallel import distributed
    _clear_multi_host_env(monkeypatch)
    metadata, asked = {}, []

    def fake_metadata(key, timeout_s=distributed._METADATA_TIMEOUT_S):  # noqa: ARG001 - _tpu_metadata's signature
        asked.append(key)
        return metadata.get(key)

    monkeypatch.setattr(distributed, "_tpu_metadata", fake_metadata)
    # This CPU machine is no Cloud TPU VM (JAX found no TPU): the metadata server is never asked.
    assert distributed._on_cloud_tpu_vm() is False
    assert distributed._looks_multi_host() is False and asked == []

    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: True)
    metadata["worker-network-endpoints"] = "t1v-n-0-w-0:0:10.130.0.2,t1v-n-0-w-1:1:10.130.0.3," \
                                           "t1v-n-0-w-2:2:10.130.0.4,t1v-n-0-w-3:3:10.130.0.5"  # a v4-32
    assert distributed._cloud_tpu_hosts() == 4 and distributed._looks_multi_host() is True
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    assert initialize() is True  # auto: jax.distributed.initialize() with nothing given, it auto-detects too
    assert calls == [{"coordinator_address": None, "num_processes": None, "process_id": None,
                      "initialization_timeout": 300}]
    assert initialize(enabled=False) is False and len(calls) == 1

    metadata["worker-network-endpoints"] = "10.130.0.2"  # a single-host TPU VM (v4-8, v5litepod-8)
    assert distributed._cloud_tpu_hosts() == 1 and distributed._looks_multi_host() is False
    metadata["tpu-env"] = "ACCELERATOR_TYPE: 'v5litepod-8'\nMEGASCALE_NUM_SLICES: '2'\nMEGASCALE_SLICE_ID: '0'\n"
    assert distributed._cloud_tpu_hosts() == 2 and distributed._looks_multi_host() is True  # multislice

    metadata.clear()  # the server does not answer: single host, as before
    assert distributed._cloud_tpu_hosts() == 1 and distributed._looks_multi_host() is False
    asked.clear()
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # set by JAX itself when it finds no TPU chips
    assert distributed._looks_multi_host() is False and asked == []


def test_auto_start_up_reads_gke_and_multislice_variables(monkeypatch):
    from dsmath_jax.parallel import distributed
    _clear_multi_host_env(monkeypatch)
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)
    for name, value, expected in [("TPU_PROCESS_ADDRESSES", "10.0.0.1:8476", False),
                                  ("TPU_PROCESS_ADDRESSES", "10.0.0.1:8476,10.0.0.2:8476", True),
                                  ("MEGASCALE_NUM_SLICES", "1", False), ("MEGASCALE_NUM_SLICES", "2", True),
                                  ("TPU_WORKER_HOSTNAMES", "w-0,w-1", True), ("SLURM_NTASKS", "1", False)]:
        monkeypatch.setenv(name, value)
        assert distributed._looks_multi_host() is expected, (name, value)
        monkeypatch.delenv(name)


def test_tpu_metadata_asks_the_gce_metadata_server(monkeypatch):
    """Against a local stand-in for metadata.google.internal: the Metadata-Flavor header is sent, a missing
    attribute (404) and a server that is gone both read as None."""
    import http.server
    import threading

    from dsmath_jax.parallel import distributed

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = (self.headers.get("Metadata-Flavor") == "Google"
                  and self.path == "/computeMetadata/v1/instance/attributes/worker-network-endpoints")
            body = b"10.0.0.2,10.0.0.3" if ok else b"not found"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy must not be used for the metadata server
    try:
        assert distributed._tpu_metadata("worker-network-endpoints") == "10.0.0.2,10.0.0.3"
        assert distributed._tpu_metadata("tpu-env") is None
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert distributed._tpu_metadata("worker-network-endpoints", timeout_s=1.0) is None  # nothing listens now


def test_rules_with_moves_one_logical_axis():
    from dsmath_jax.parallel.mesh import DEFAULT_RULES, rules_with
    rules = dict(rules_with(act_embed="tensor"))
    assert rules["act_embed"] == "tensor"
    assert {k: v for k, v in rules.items() if k != "act_embed"} == {k: v for k, v in DEFAULT_RULES if k != "act_embed"}
    with pytest.raises(KeyError, match="unknown logical axes"):
        rules_with(embedding="fsdp")
