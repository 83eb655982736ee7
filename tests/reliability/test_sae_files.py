"""Dictionary files that disagree with themselves are refused with the file, the field and the fix named."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from interp import sae

HOOK = "blocks.1.hook_resid_post"


def config(arch: str, transcoder: bool = False):
    config_cls, _ = sae.architecture(arch)
    kw = {"k": 3} if "k" in {f.name for f in __import__("dataclasses").fields(config_cls)} else {}
    if transcoder:
        kw.update(hook_name_out="blocks.1.hook_mlp_out", d_out=7, skip=True)
    return config_cls(d_in=5, width=12, hook_name=HOOK, **kw)


def written(tmp_path, arch="jumprelu", transcoder=False):
    d = sae.create(config(arch, transcoder), jax.random.PRNGKey(0))
    return d, sae.save(d, tmp_path / "d")


def rewrite_weights(folder, **changes):
    w = load_file(str(folder / "sae_weights.safetensors"))
    for k, v in changes.items():
        if v is None:
            del w[k]
        else:
            w[k] = v
    save_file(w, str(folder / "sae_weights.safetensors"))


def rewrite_cfg(folder, edit):
    raw = json.loads((folder / "cfg.json").read_text())
    edit(raw)
    (folder / "cfg.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("arch", sorted(sae.REGISTRY))
@pytest.mark.parametrize("transcoder", [False, True])
def test_every_architecture_round_trips_exactly(arch, transcoder, tmp_path):
    d, folder = written(tmp_path, arch, transcoder)
    back = sae.load(folder)
    assert type(back) is type(d) and back.cfg == d.cfg
    for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("arch, name, shape", [
    ("standard", "b_enc", (1,)), ("standard", "b_dec", (1,)), ("jumprelu", "threshold", (1,)),
    ("batchtopk", "threshold", (1,)), ("topk", "W_enc", (12, 5)),
])
def test_tensor_shapes_are_checked_against_the_config(arch, name, shape, tmp_path):
    d, folder = written(tmp_path, arch)
    rewrite_weights(folder, **{name: np.ones(shape, np.float32)})
    expect = {"b_enc": (12,), "b_dec": (5,), "threshold": (12,), "W_enc": (5, 12)}[name]
    with pytest.raises(ValueError, match=re.escape(f"{name} has shape {shape}, but cfg.json implies {expect}")) as e:
        sae.load(folder)
    assert "sae_weights.safetensors" in str(e.value)


def test_skip_weights_of_a_transcoder_are_checked(tmp_path):
    d, folder = written(tmp_path, "topk", transcoder=True)
    rewrite_weights(folder, W_skip=np.ones((5, 1), np.float32))
    with pytest.raises(ValueError, match=re.escape("W_skip has shape (5, 1), but cfg.json implies (5, 7)")):
        sae.load(folder)
    rewrite_weights(folder, W_skip=None)
    with pytest.raises(ValueError, match="lacks 'W_skip'.*skip=True"):
        sae.load(folder)


def test_a_skip_matrix_the_config_does_not_use_is_refused(tmp_path):
    d, folder = written(tmp_path, "standard")
    rewrite_weights(folder, W_skip=np.ones((5, 5), np.float32))
    with pytest.raises(ValueError, match="holds 'W_skip'.*does not use"):
        sae.load(folder)


def test_integer_and_non_finite_weights_are_refused(tmp_path):
    d, folder = written(tmp_path, "standard")
    rewrite_weights(folder, W_enc=np.ones((5, 12), np.int32))
    with pytest.raises(ValueError, match="W_enc has dtype int32; dictionary weights must be floating point"):
        sae.load(folder)
    w_dec = np.ones((12, 5), np.float32)
    w_dec[3, 1] = np.nan
    rewrite_weights(folder, W_enc=np.ones((5, 12), np.float32), W_dec=w_dec)
    with pytest.raises(ValueError, match="W_dec holds 1 NaN or infinite values"):
        sae.load(folder)


def test_a_shared_threshold_must_be_one_value(tmp_path):
    d, folder = written(tmp_path, "batchtopk")
    rewrite_weights(folder, threshold=np.linspace(0.1, 0.2, 12).astype(np.float32))
    with pytest.raises(ValueError, match="threshold.*one value repeated"):
        sae.load(folder)


@pytest.mark.parametrize("arch, field, value, ours", [
    ("topk", "architecture", "standard", "topk"), ("topk", "d_in", 6, 5), ("topk", "d_sae", 13, 12),
    ("topk", "k", 4, 3), ("standard", "apply_b_dec_to_input", False, True),
    ("topk", "normalize_activations", "expected_average_only_in", "none"),
])
def test_top_level_fields_must_agree_with_the_interp_config(arch, field, value, ours, tmp_path):
    d, folder = written(tmp_path, arch)
    rewrite_cfg(folder, lambda raw: raw.update({field: value}))
    with pytest.raises(ValueError, match=re.escape(f"'{field}' is {value!r}")) as e:
        sae.load(folder)
    assert f"{ours!r}" in str(e.value) and "cfg.json" in str(e.value)


def test_hook_names_must_agree(tmp_path):
    d, folder = written(tmp_path, "topk")
    rewrite_cfg(folder, lambda raw: raw["metadata"].update(hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(ValueError,
                       match=r"'metadata.hook_name' is 'blocks.0.hook_resid_post'.*'blocks.1.hook_resid_post'"):
        sae.load(folder)


def saelens_style(tmp_path, arch="topk"):
    """A folder as SAELens writes it: no metadata.interp."""
    d, folder = written(tmp_path, arch)
    rewrite_cfg(folder, lambda raw: raw["metadata"].pop("interp"))
    return folder


@pytest.mark.parametrize("key", ["d_in", "d_sae", "k"])
def test_missing_config_keys_are_named(key, tmp_path):
    folder = saelens_style(tmp_path)
    rewrite_cfg(folder, lambda raw: raw.pop(key))
    with pytest.raises(ValueError, match=f"cfg.json.*lacks '{key}'"):
        sae.load(folder)


def test_a_broken_interp_config_is_named(tmp_path):
    d, folder = written(tmp_path, "topk")
    rewrite_cfg(folder, lambda raw: raw["metadata"]["interp"].pop("width"))
    with pytest.raises(ValueError, match=r"cfg.json.*metadata.interp is not a valid topk config.*width"):
        sae.load(folder)


@pytest.mark.parametrize("arch, key", [("standard", "b_dec"), ("jumprelu", "threshold")])
def test_missing_tensors_are_named(arch, key, tmp_path):
    d, folder = written(tmp_path, arch)
    rewrite_weights(folder, **{key: None})
    with pytest.raises(ValueError, match=f"sae_weights.safetensors lacks '{key}'"):
        sae.load(folder)


def test_bad_json_is_named(tmp_path):
    d, folder = written(tmp_path)
    (folder / "cfg.json").write_text('{"d_in": 5,')
    with pytest.raises(ValueError, match="cfg.json is not valid JSON"):
        sae.load(folder)
    (folder / "cfg.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="cfg.json must hold a JSON object"):
        sae.load(folder)


def test_truncated_weights_are_named(tmp_path):
    d, folder = written(tmp_path)
    path = folder / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="sae_weights.safetensors cannot be read.*truncated or corrupt"):
        sae.load(folder)


def test_negative_thresholds_are_refused(tmp_path):
    d, folder = written(tmp_path, "jumprelu")
    rewrite_weights(folder, threshold=np.full((12,), -0.5, np.float32))
    with pytest.raises(ValueError, match="threshold holds negative values"):
        sae.load(folder)


def test_saelens_configs_we_cannot_read_name_the_file(tmp_path):
    folder = saelens_style(tmp_path)
    rewrite_cfg(folder, lambda raw: raw.update(architecture="gated"))
    with pytest.raises(ValueError, match=r"cfg.json: SAELens architecture 'gated' is not supported"):
        sae.load(folder)
    rewrite_cfg(folder, lambda raw: raw.update(metadata=["hook"]))
    with pytest.raises(ValueError, match="cfg.json: 'metadata' must be a JSON object"):
        sae.load(folder)
