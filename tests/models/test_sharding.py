"""Models over a device mesh (``interp.load(..., mesh=)``): on 8 forced host devices, a 2 (data) x 4 (model) mesh
gives the single-device logits, caches, edits, gradients, patching sweeps and generations, with heads and MLP
columns split across ``model`` and the batch across ``data``, for a GQA Llama (whose 2 kv heads stay whole on a
4-wide axis) and GPT-2 (biases, LayerNorm, learned positions). Each case runs in a fresh interpreter, since the
device count is fixed when JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import interp
from interp.models import sharding

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, pathlib, numpy as np, jax, jax.numpy as jnp, interp
    from interp import circuits
    from interp.models import sharding
    from tests.models import test_gpt2_neox_parity as gpt2_neox
    from tests.tiny_chat import tiny_chat_folder

    assert jax.device_count() == 8, jax.device_count()
    out = pathlib.Path(sys.argv[1])
    kind = sys.argv[2]
    if kind == "llama":
        folder = tiny_chat_folder(out / "model")
    else:
        hf = gpt2_neox.make_hf("gpt2")
        folder = out / "model"
        hf.save_pretrained(folder, safe_serialization=True)
    one = interp.load(folder)
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    m = interp.load(folder, mesh=mesh)
    where = sharding.describe(m)
    assert where[".blocks[0].attn.W_Q"] == "P(None, 'model')", where
    assert where[".blocks[0].mlp.W_out"] == "P('model',)", where
    # each device holds a quarter of the split weights
    w = m.blocks[0].mlp.W_in
    assert {s.data.shape for s in w.addressable_shards} == {(w.shape[0], w.shape[1] // 4)}

    worst = lambda a, b: float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
    rng = np.random.default_rng(0)
    toks = rng.integers(3, one.d_vocab, (4, 9))
    report = {"logits": worst(one(toks), m(toks))}
    names = one.hook_names
    _, c1 = one.run_with_cache(toks, names)
    _, c2 = m.run_with_cache(toks, names)
    report["cache"] = max(worst(c1[n], c2[n]) for n in names)
    whole = dict(m.run_with_cache(toks, names)[1].items())  # read whole: its derived entries in one program
    report["cache read whole"] = max(worst(c1[n], whole[n]) for n in names)
    assert "data" in str(c2["blocks.0.hook_resid_post"].sharding.spec)
    # an edit with a traced value: same result, one compiled program for two values
    hook = "blocks.1.hook_resid_pre"
    edit = lambda x, name, v: x + v  # noqa: E731
    outs = []
    for v in (0.5, -1.0):
        e = (hook, edit, jnp.float32(v))
        outs.append((one.run_with_hooks(toks, edits=[e]), m.run_with_hooks(toks, edits=[e])))
    report["edit"] = max(worst(a, b) for a, b in outs)
    # a gradient through the sharded model
    def loss(model, t):
        return jax.nn.log_softmax(model(t)[:, -1]).mean()
    ga = jax.grad(lambda mm: loss(mm, toks))(one)
    gb = jax.grad(lambda mm: loss(mm, toks))(m)
    report["grad"] = worst(ga.blocks[0].mlp.W_in, gb.blocks[0].mlp.W_in)
    # a patching sweep over layer x position
    clean, corrupt = toks[:2], toks[2:]
    metric = lambda logits: logits[:, -1, 5].mean()  # noqa: E731
    p1 = circuits.patch(one, clean, corrupt, metric, "resid_pre", per="pos", progress=False)
    p2 = circuits.patch(m, clean, corrupt, metric, "resid_pre", per="pos", progress=False)
    report["patch"] = worst(p1.values, p2.values)
    # greedy generation
    prompts = ["a b c", "d e"] if kind != "llama" else ["hello there", "how are"]
    if kind == "llama":
        t1, t2 = one.generate(prompts, 8).texts, m.generate(prompts, 8).texts
    else:
        ids = toks[:2, :4]
        t1 = np.asarray(one.generate(ids, 8).tokens).tolist()
        t2 = np.asarray(m.generate(ids, 8).tokens).tolist()
    assert t1 == t2, (t1, t2)
    print("REPORT", report)
    assert max(report.values()) < 1e-4, report
""")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # the tiny chat model is a GQA Llama (4 heads, 2 kv)
def test_sharded_model_equals_one_device(kind, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), kind], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "REPORT" in done.stdout
    print(done.stdout.strip().splitlines()[-1])


def test_split_axes_follow_the_table():
    """Heads, kv heads, MLP columns and the vocabulary split over ``model`` when the axis divides them."""
    from jax.tree_util import GetAttrKey, SequenceKey

    def path(*names):
        return tuple(SequenceKey(n) if isinstance(n, int) else GetAttrKey(n) for n in names)

    leaf = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    P = jax.sharding.PartitionSpec
    assert sharding.spec_for(path("blocks", 0, "attn", "W_Q"), leaf(8, 4, 2), 4) == P(None, "model")
    assert sharding.spec_for(path("blocks", 0, "attn", "W_K"), leaf(8, 2, 2), 4) == P()  # 2 kv heads, 4 devices
    assert sharding.spec_for(path("blocks", 0, "attn", "W_O"), leaf(4, 2, 8), 4) == P("model")
    assert sharding.spec_for(path("blocks", 3, "mlp", "W_out"), leaf(16, 8), 4) == P("model")
    assert sharding.spec_for(path("blocks", 3, "mlp", "b_in"), leaf(16), 4) == P("model")
    assert sharding.spec_for(path("blocks", 3, "mlp", "b_out"), leaf(8), 4) == P()
    assert sharding.spec_for(path("blocks", 3, "ln2", "weight"), leaf(8), 4) == P()
    assert sharding.spec_for(path("embed", "W_E"), leaf(100, 8), 4) == P("model")
    assert sharding.spec_for(path("embed", "W_E"), leaf(97, 8), 4) == P()
    assert sharding.spec_for(path("unembed"), leaf(8, 100), 4) == P(None, "model")


def test_mesh_is_checked(tmp_path):
    from tests.tiny_chat import tiny_chat_folder

    folder = tiny_chat_folder(tmp_path / "toy")
    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh"):
        interp.load(folder, mesh=("data", "model"))
    with pytest.raises(ValueError, match=r"the mesh's axes are \('x',\); name the axis .* 'model'"):
        interp.load(folder, mesh=jax.make_mesh((1,), ("x",)))
    # one device: a (1, 1) mesh places everything there and the model runs as before
    m = interp.load(folder, mesh=jax.make_mesh((1, 1), ("data", "model")))
    toks = np.array([[3, 4, 5, 6]])
    np.testing.assert_allclose(np.asarray(m(toks)), np.asarray(interp.load(folder)(toks)), atol=1e-6)
