"""Numeric arguments of training runs and dictionaries are checked where they enter: the message names the
field, the value and the valid range; NaN and infinities are refused like any other out-of-range value."""

from __future__ import annotations

import math
import re

import pytest

import interp
from interp import sae
from interp.cli import architecture_options, main
from tests.reliability.test_training_runs import acts, write_activation_cache  # noqa: F401 (fixture)

NAN, INF = math.nan, math.inf


def topk(**kw):
    return sae.TopKConfig(**{"d_in": 16, "width": 64, "k": 4, **kw})


@pytest.mark.parametrize("field,value,message", [
    ("lr", -1.0, "lr=-1.0 must be a finite number > 0"),
    ("lr", 0.0, "lr=0.0 must be a finite number > 0"),
    ("lr", NAN, "lr=nan must be a finite number > 0"),
    ("lr", INF, "lr=inf must be a finite number > 0"),
    ("betas", (1.0, 0.999), "betas[0]=1.0 must be a finite number in [0, 1)"),
    ("betas", (0.9, NAN), "betas[1]=nan must be a finite number in [0, 1)"),
    ("betas", (0.9,), "betas=(0.9,) must be a pair (beta1, beta2)"),
    ("lr_warmup_steps", -1, "lr_warmup_steps=-1 must be an integer >= 0"),
    ("lr_decay_fraction", 1.5, "lr_decay_fraction=1.5 must be a finite number in [0, 1]"),
    ("lr_decay_fraction", NAN, "lr_decay_fraction=nan must be a finite number in [0, 1]"),
    ("sparsity_warmup_steps", -3, "sparsity_warmup_steps=-3 must be an integer >= 0"),
    ("batch_size", 0, "batch_size=0 must be a positive integer (>= 1)"),
    ("batch_size", 2.5, "batch_size=2.5 must be a positive integer (>= 1)"),
    ("batch_size", True, "batch_size=True must be a positive integer (>= 1)"),
    ("context_size", 0, "context_size=0 must be a positive integer (>= 1)"),
    ("model_batch", 0, "model_batch=0 must be a positive integer (>= 1)"),
    ("buffer_tokens", -1, "buffer_tokens=-1 must be a positive integer (>= 1)"),
    ("total_tokens", 100, "total_tokens=100 must be an integer >= 256 (one batch)"),
    ("dead_after_tokens", 0, "dead_after_tokens=0 must be a positive integer (>= 1)"),
    ("skip_positions", -1, "skip_positions=-1 must be an integer in [0, 128)"),
    ("skip_positions", 128, "skip_positions=128 must be an integer in [0, 128)"),
    ("seed", -1, "seed=-1 must be an integer in [0, 4294967295]"),
    ("seed", 2**32, "seed=4294967296 must be an integer in [0, 4294967295]"),
    ("checkpoint_every", -1, "checkpoint_every=-1 must be an integer >= 0"),
    ("keep_checkpoints", 0, "keep_checkpoints=0 must be a positive integer (>= 1)"),
    ("eval_every", -5, "eval_every=-5 must be an integer >= 0"),
    ("data_parallel", 0, "data_parallel=0 must be a positive integer (>= 1)"),
    ("latent_parallel", -2, "latent_parallel=-2 must be a positive integer (>= 1)"),
])
def test_train_config_rejects_out_of_range_numbers(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sae.TrainConfig(topk(), **{"total_tokens": 2560, "batch_size": 256, field: value})


def test_train_config_accepts_the_edges_of_each_range():
    cfg = sae.TrainConfig(topk(), total_tokens=256, batch_size=256, lr=1e-9, betas=(0.0, 0.999999),
                          lr_warmup_steps=0, lr_decay_fraction=1.0, context_size=1, skip_positions=0, seed=2**32 - 1,
                          checkpoint_every=0, keep_checkpoints=1, eval_every=0, dead_after_tokens=1)
    assert cfg.steps == 1
    assert sae.JumpReLUConfig(d_in=1, width=2, l0_coeff=0.0).l0_coeff == 0.0
    assert topk(k=63, aux_coeff=0.0, aux_batch_fraction=1.0).k == 63
    assert sae.BatchTopKConfig(d_in=4, width=8, k=2, threshold_decay=0.0, candidate_factor=1).k == 2


@pytest.mark.parametrize("make,message", [
    (lambda: topk(d_in=0), "d_in=0 must be a positive integer (>= 1)"),
    (lambda: topk(width=-64), "width=-64 must be a positive integer (>= 1)"),
    (lambda: topk(width=64.0), "width=64.0 must be a positive integer (>= 1)"),
    (lambda: topk(d_out=0, hook_name_out="b"), "d_out=0 must be a positive integer (>= 1)"),
    (lambda: topk(k=2.5), "k=2.5 must be a positive integer (>= 1)"),
    (lambda: topk(aux_k=0), "aux_k=0 must be a positive integer (>= 1)"),
    (lambda: topk(aux_coeff=NAN), "aux_coeff=nan must be a finite number >= 0"),
    (lambda: topk(aux_coeff=-1.0), "aux_coeff=-1.0 must be a finite number >= 0"),
    (lambda: topk(aux_batch_fraction=0.0), "aux_batch_fraction=0.0 must be a finite number in (0, 1]"),
    (lambda: sae.StandardConfig(d_in=4, width=8, l1_coeff=NAN), "l1_coeff=nan must be a finite number >= 0"),
    (lambda: sae.StandardConfig(d_in=4, width=8, l1_coeff=INF), "l1_coeff=inf must be a finite number >= 0"),
    (lambda: sae.BatchTopKConfig(d_in=4, width=8, k=2, candidate_factor=0),
     "candidate_factor=0 must be a positive integer (>= 1)"),
    (lambda: sae.BatchTopKConfig(d_in=4, width=8, k=2, threshold_decay=1.5),
     "threshold_decay=1.5 must be a finite number in [0, 1]"),
    (lambda: sae.MatryoshkaConfig(d_in=4, width=8, k=2, prefixes=(2.5, 8)),
     "prefixes[0]=2.5 must be a positive integer (>= 1)"),
    (lambda: sae.JumpReLUConfig(d_in=4, width=8, l0_coeff=-1.0), "l0_coeff=-1.0 must be a finite number >= 0"),
    (lambda: sae.JumpReLUConfig(d_in=4, width=8, bandwidth=NAN), "bandwidth=nan must be a finite number > 0"),
    (lambda: sae.JumpReLUConfig(d_in=4, width=8, init_threshold=INF),
     "init_threshold=inf must be a finite number > 0"),
    (lambda: sae.Transcoders((), skip_positions=-1), "skip_positions=-1 must be an integer >= 0"),
])
def test_dictionary_configs_reject_out_of_range_numbers(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "-1", "argument --lr: -1 must be a finite number > 0"),
    ("--lr", "nan", "argument --lr: nan must be a finite number > 0"),
    ("--lr", "inf", "argument --lr: inf must be a finite number > 0"),
    ("--context-size", "0", "argument --context-size: 0 must be a positive integer (>= 1)"),
    ("--batch-size", "0", "argument --batch-size: 0 must be a positive integer (>= 1)"),
    ("--tokens", "-5", "argument --tokens: -5 must be a positive integer (>= 1)"),
    ("--width", "0", "argument --width: 0 must be a positive integer (>= 1)"),
    ("--k", "0", "argument --k: 0 must be a positive integer (>= 1)"),
    ("--l1-coeff", "-1", "argument --l1-coeff: -1 must be a finite number >= 0"),
    ("--l0-coeff", "nan", "argument --l0-coeff: nan must be a finite number >= 0"),
    ("--buffer-tokens", "0", "argument --buffer-tokens: 0 must be a positive integer (>= 1)"),
    ("--lr-warmup-steps", "-1", "argument --lr-warmup-steps: -1 must be an integer >= 0"),
    ("--sparsity-warmup-steps", "-1", "argument --sparsity-warmup-steps: -1 must be an integer >= 0"),
    ("--checkpoint-every", "-1", "argument --checkpoint-every: -1 must be an integer >= 0"),
    ("--seed", "-1", "argument --seed: -1 must be an integer in [0, 4294967295]"),
    ("--data-parallel", "0", "argument --data-parallel: 0 must be a positive integer (>= 1)"),
    ("--latent-parallel", "0", "argument --latent-parallel: 0 must be a positive integer (>= 1)"),
    ("--tokens", "1e6", "argument --tokens: '1e6' is not an integer"),
])
def test_train_sae_rejects_bad_numbers_before_any_work(acts, tmp_path, capsys, flag, value, message):  # noqa: F811
    cache = write_activation_cache(tmp_path / "acts", acts)
    args = ["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--width", "32",
            "--k", "4", "--tokens", "2560", "--batch-size", "256", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        main(args + [flag, value])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cross_field_limits_reach_the_command_line_as_messages(acts, tmp_path):  # noqa: F811
    cache = write_activation_cache(tmp_path / "acts", acts)
    with pytest.raises(SystemExit, match=re.escape("interp train-sae: total_tokens=100 must be an integer >= 256")):
        main(["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--tokens", "100",
              "--batch-size", "256", "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("argv,message", [
    (["train-transcoders", "--lr", "0"], "argument --lr: 0 must be a finite number > 0"),
    (["train-transcoders", "--model-batch", "0"], "argument --model-batch: 0 must be a positive integer (>= 1)"),
    (["train-transcoders", "--context-size", "-1"], "argument --context-size: -1 must be a positive integer (>= 1)"),
    (["train-transcoders", "--k", "0"], "argument --k: 0 must be a positive integer (>= 1)"),
    (["train-transcoders", "--skip", "--cross-layer"], "argument --cross-layer: not allowed with argument --skip"),
    (["train-transcoders", "--checkpoint-every", "-1"], "argument --checkpoint-every: -1 must be an integer >= 0"),
    (["demo", "--sae-tokens", "0"], "argument --sae-tokens: 0 must be a positive integer (>= 1)"),
    (["demo", "--sae-layer", "-1"], "argument --sae-layer: -1 must be an integer >= 0"),
])
def test_other_commands_reject_bad_numbers(monkeypatch, tmp_path, capsys, argv, message):
    def no_model(*a, **k):
        raise AssertionError("the arguments should have been refused before any model is loaded")

    monkeypatch.setattr(interp, "load", no_model)
    monkeypatch.setattr("interp.demo.run", no_model)
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("field", sorted(architecture_options()))
def test_every_architecture_option_refuses_bad_numbers_before_any_work(acts, tmp_path, capsys, field):  # noqa: F811
    option = next(iter(architecture_options()[field].values()))[0]
    text = str(int(option.lo) - 1) if option.integer else "nan"
    flag = "--" + field.replace("_", "-")
    cache = write_activation_cache(tmp_path / "acts", acts)
    with pytest.raises(SystemExit) as e:
        main(["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache),
              "--out", str(tmp_path / "run"), flag, text])
    assert e.value.code == 2
    assert f"argument {flag}: {text} must be" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch", list(sae.REGISTRY))
def test_an_option_of_other_architectures_is_refused_before_any_work(acts, tmp_path, arch):  # noqa: F811
    cache = write_activation_cache(tmp_path / "acts", acts)
    config_cls, _ = sae.architecture(arch)
    for field, by_arch in architecture_options().items():
        if field in config_cls.options:
            continue
        flag = "--" + field.replace("_", "-")
        message = f"interp train-sae: {flag} is an option of {', '.join(by_arch)}, not of --arch {arch}"
        with pytest.raises(SystemExit, match=re.escape(message)):
            main(["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--arch", arch,
                  "--out", str(tmp_path / "run"), flag, "1"])
        assert not (tmp_path / "run").exists()
