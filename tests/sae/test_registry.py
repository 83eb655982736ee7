"""The architecture registry: every registered architecture trains, and one defined here (a file of its own would do
the same) is picked up by files, the command line and the trainer with no other change."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Bool, Float

from interp import sae
from interp.cli import architecture_kwargs, build_parser, main
from interp.sae._base import init_affine, mse, nonnegative, total_variance
from interp.sae.trainer import init_state, make_optimizer, make_step
from tests.sae.test_training import gaussian_acts

HOOK = "blocks.0.hook_resid_post"


def config(arch: str, **kw):
    """``arch``'s config with its own defaults (k=32 of 64 latents for the TopK family)."""
    config_cls, _ = sae.architecture(arch)
    return config_cls(**{"d_in": 16, "width": 64, "hook_name": HOOK, **kw})


@pytest.mark.parametrize("arch", list(sae.REGISTRY))
def test_every_architecture_trains_a_step(arch):
    cfg = sae.TrainConfig(config(arch), total_tokens=256 * 2, batch_size=256, lr=1e-3, lr_warmup_steps=0,
                          dead_after_tokens=256)
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    state = eqx.tree_at(lambda s: s.since_fired, state, jnp.full((64,), 256, jnp.int32))  # every latent counts as dead
    before = {name: np.asarray(getattr(state.dictionary, name)) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    step = make_step(cfg, optimizer)
    x = jnp.asarray(gaussian_acts(n=256, seed=3))
    cls = type(state.dictionary)
    state, metrics = step(state, x, x)
    assert set(metrics) == set(sae.metric_names(cfg.dictionary))
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    for name, old in before.items():
        assert not np.array_equal(np.asarray(getattr(state.dictionary, name)), old), f"{name} did not change"
    if cls.aux is not None:  # with dead latents the auxiliary loss runs and counts in the loss
        assert float(metrics[cls.aux.name]) > 0
    state, again = step(state, x, x)
    assert float(again["loss"]) != float(metrics["loss"]) and math.isfinite(float(again["loss"]))


@pytest.mark.parametrize("arch", list(sae.REGISTRY))
def test_training_histories_carry_the_declared_metrics(arch):
    cfg = sae.TrainConfig(config(arch), total_tokens=256 * 4, batch_size=256, lr_warmup_steps=0, eval_every=2)
    result = sae.train(cfg, store=sae.ArrayActivationStore(gaussian_acts(n=1024), batch_size=256), progress=False)
    for row in result.history:
        assert set(row) == {"step", "tokens", *sae.metric_names(cfg.dictionary), "elapsed_s"}


# ----------------------------------------------------------------------------- an architecture defined here


@dataclasses.dataclass(frozen=True)
class GateConfig(sae.DictConfig):
    """A ReLU SAE whose latents pass only above a fixed per-latent gate, with a penalty pulling dead latents'
    encoder columns towards the data."""

    init_gate: float = 0.05
    revive_coeff: float = 0.5
    options: ClassVar[Mapping[str, sae.Option]] = {"revive_coeff": sae.Option("weight of the revival loss")}


class GateSAE(sae.Dictionary):
    gate: Float[Array, " M"]
    saelens = sae.SAELensLayout("jumprelu", tensors=("threshold",))  # the same function: JumpReLU, threshold = gate
    metrics = ("mse", "fvu", "l0", "open_gates")
    aux = sae.AuxLoss("revive", "revive_coeff")

    @classmethod
    def init(cls, cfg, key, dtype=jnp.float32):
        return cls(**init_affine(cfg, key, dtype), gate=jnp.full((cfg.width,), cfg.init_gate, dtype), cfg=cfg)

    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        return pre * (pre > self.gate).astype(pre.dtype)

    def loss(self, x, y, ctx):
        z = self.activate(self.pre_acts(x))
        y_hat = self.decode(z)
        recon = mse(y_hat, y)
        return recon, {"mse": recon, "fvu": recon / total_variance(y), "l0": jnp.mean(jnp.sum(z > 0, axis=-1)),
                       "open_gates": jnp.mean((self.gate < 0.1).astype(recon.dtype)), "fired": jnp.any(z > 0, axis=0),
                       "error": y - y_hat}

    def aux_loss(self, x, y, error, dead: Bool[Array, " M"]):
        pre = self.pre_acts(x)
        return -jnp.mean(jnp.where(dead, pre, 0.0))

    def to_saelens(self):
        return {"threshold": self.gate}

    @classmethod
    def from_saelens(cls, cfg, tensors, dtype):
        return {"gate": jnp.asarray(nonnegative("threshold", tensors["threshold"]), dtype)}


@pytest.fixture
def gate():
    sae.register("gate", GateConfig)(GateSAE)
    try:
        yield
    finally:
        sae.unregister("gate")
    assert "gate" not in sae.REGISTRY and "--revive-coeff" not in build_parser().format_help()


def train_sae_parser():
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train-sae"]


def test_a_registered_architecture_saves_and_loads(gate, tmp_path):
    d = sae.create(GateConfig(d_in=8, width=32, hook_name=HOOK, revive_coeff=0.25), jax.random.PRNGKey(0))
    d = eqx.tree_at(lambda t: t.gate, d, jnp.linspace(0.0, 0.5, 32))
    folder = sae.save(d, tmp_path / "gate")
    raw = json.loads((folder / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu" and raw["metadata"]["interp"]["arch"] == "gate"
    back = sae.load(folder)
    assert type(back) is GateSAE and back.cfg == d.cfg
    for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # its tensors are checked like every architecture's
    from safetensors.numpy import load_file, save_file

    w = load_file(str(folder / "sae_weights.safetensors"))
    save_file({**w, "threshold": np.ones(3, np.float32)}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"threshold has shape \(3,\), but cfg.json implies \(32,\)"):
        sae.load(folder)
    # and SAELens computes what it computes
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    sae.save(d, folder)
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    with torch.no_grad():
        z = theirs.encode(torch.tensor(x)).numpy()
    np.testing.assert_allclose(z, np.asarray(d.encode(jnp.asarray(x))), atol=1e-5)


def test_a_registered_architecture_reaches_the_command_line(gate, tmp_path, capsys):
    help_text = " ".join(train_sae_parser().format_help().split())
    assert "--revive-coeff REVIVE_COEFF weight of the revival loss, for gate (default: 0.5)" in help_text
    assert f"architecture: {', '.join(sae.REGISTRY)} (default: topk)" in help_text and "standard, gate" in help_text
    args = build_parser().parse_args(["train-sae", "--hook", HOOK, "--arch", "gate", "--revive-coeff", "0.125",
                                      "--out", str(tmp_path)])
    assert architecture_kwargs(args, GateConfig) == {"revive_coeff": 0.125}
    with pytest.raises(ValueError, match="--revive-coeff is an option of gate, not of --arch topk"):
        architecture_kwargs(argparse.Namespace(**{**vars(args), "arch": "topk"}), sae.TopKConfig)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-sae", "--hook", HOOK, "--revive-coeff", "-1", "--out", str(tmp_path)])
    assert "argument --revive-coeff: -1 must be a finite number >= 0" in capsys.readouterr().err
    # and the command trains it
    from tests.reliability.test_training_runs import write_activation_cache

    cache = write_activation_cache(tmp_path / "acts", gaussian_acts(n=1024))
    assert main(["train-sae", "--hook", HOOK, "--activation-cache", str(cache), "--arch", "gate", "--width", "32",
                 "--revive-coeff", "0.125", "--tokens", "1024", "--batch-size", "256", "--lr-warmup-steps", "1",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    d = sae.load(tmp_path / "run" / "final")
    assert type(d) is GateSAE and d.cfg.revive_coeff == 0.125 and d.cfg.width == 32


def test_a_registered_architecture_reports_its_metrics_in_training(gate):
    # gates no activation reaches: every latent is silent in the first step, and dead from the second on
    cfg = sae.TrainConfig(GateConfig(d_in=16, width=64, init_gate=100.0), total_tokens=256 * 4, batch_size=256,
                          lr_warmup_steps=0, eval_every=1, dead_after_tokens=256)
    assert sae.metric_names(cfg.dictionary) == ("mse", "fvu", "l0", "open_gates", "revive", "loss", "dead_fraction")
    result = sae.train(cfg, store=sae.ArrayActivationStore(gaussian_acts(n=1024), batch_size=256), progress=False)
    keys = {"step", "tokens", *sae.metric_names(cfg.dictionary), "elapsed_s"}
    assert [set(row) for row in result.history] == [keys] * 4
    assert [row["dead_fraction"] for row in result.history] == [1.0] * 4
    assert [row["open_gates"] for row in result.history] == [0.0] * 4 and result.history[0]["l0"] == 0
    # the revival loss runs from the second step, weighted by revive_coeff
    assert result.history[0]["revive"] == 0 and all(row["revive"] != 0 for row in result.history[1:])
    assert all(row["loss"] == pytest.approx(row["mse"] + 0.5 * row["revive"], rel=1e-5) for row in result.history)


# ----------------------------------------------------------------------------- declarations are checked


def test_registration_checks_the_declarations():
    @dataclasses.dataclass(frozen=True)
    class Cfg(sae.DictConfig):
        options: ClassVar[Mapping[str, sae.Option]] = {"kk": sae.Option("a typo")}

    class NoLayout(GateSAE):
        saelens = None

    with pytest.raises(ValueError, match="options names 'kk', which is not a field of Cfg"):
        sae.register("typo", Cfg)(GateSAE)
    with pytest.raises(TypeError, match="architecture 'nolayout' declares no SAELens layout"):
        sae.register("nolayout", GateConfig)(NoLayout)
    with pytest.raises(ValueError, match="TopKConfig is already the config of \\['topk'\\]"):
        sae.register("topk2", sae.TopKConfig)(GateSAE)
    with pytest.raises(ValueError, match="architecture 'topk' is registered twice"):
        sae.register("topk", GateConfig)(GateSAE)
    assert not {"typo", "nolayout", "topk2"} & set(sae.REGISTRY)


def test_a_loss_that_reports_undeclared_metrics_is_named(gate):
    class Quiet(GateSAE):
        metrics = ("mse", "fvu", "l0")  # open_gates is reported but not declared

    @dataclasses.dataclass(frozen=True)
    class QuietConfig(GateConfig):
        pass

    sae.register("quiet", QuietConfig)(Quiet)
    try:
        cfg = sae.TrainConfig(QuietConfig(d_in=16, width=64), total_tokens=256, batch_size=256)
        optimizer = make_optimizer(cfg)
        x = jnp.asarray(gaussian_acts(n=256))
        with pytest.raises(TypeError, match=r"Quiet.loss reports .*'open_gates'.*but the class declares metrics="):
            make_step(cfg, optimizer)(init_state(cfg, optimizer), x, x)
    finally:
        sae.unregister("quiet")


def test_latent_axes_come_from_the_annotated_shapes():
    assert sae.TopKSAE.latent_axes() == {"W_enc": 1, "b_enc": 0, "W_dec": 0}
    assert sae.JumpReLUSAE.latent_axes() == {"W_enc": 1, "b_enc": 0, "W_dec": 0, "log_threshold": 0}
    assert GateSAE.latent_axes()["gate"] == 0
