"""Every registered family module keeps the contract the loaders rely on (interp.models.family)."""

from __future__ import annotations

import re
import types
from collections.abc import Mapping

import numpy as np
import pytest

from interp.models import (
    FAMILIES,
    GGUF_FAMILIES,
    HF_FAMILIES,
    Family,
    FamilyConfig,
    GGUFFamily,
    gemma,
    gpt2,
    llama,
    neox,
)
from interp.models.family import Family as FamilyProtocol

SIZES = dict(vocab_size=40, d_model=16, n_layers=2, n_heads=4, d_mlp=24)
# one small config per family, with the optional tensors switched on where the family has them
TINY = {
    llama: llama.LlamaConfig(**SIZES, n_kv_heads=2, head_dim=4, qkv_bias=True, o_bias=True, mlp_bias=True,
                             qk_norm=True),
    gpt2: gpt2.GPT2Config(**SIZES, tie_embeddings=False),
    neox: neox.NeoXConfig(**SIZES, rotary_pct=0.5),
    gemma: gemma.GemmaConfig(version=3, **SIZES, n_kv_heads=2, head_dim=4, sliding_window=4,
                             sliding_layers=(True, False), query_pre_attn_scalar=4.0, rope_local_theta=10000.0),
}
CALLABLES = ("from_hf_weights", "hf_weight_shapes", "hf_weight_names")
GGUF_CALLABLES = ("config_from_gguf", "gguf_to_hf")


def _members(protocol) -> list[str]:
    return sorted(n for n in protocol.__annotations__) + [
        n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]


def test_every_family_has_a_tiny_config():
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__.rsplit(".", 1)[-1])
def test_family_satisfies_the_protocol(family):
    assert isinstance(family, Family)
    for name in CALLABLES:
        assert callable(getattr(family, name)), name
    assert isinstance(family.HF_ARCHITECTURES, tuple) and family.HF_ARCHITECTURES
    assert all(isinstance(a, str) for a in family.HF_ARCHITECTURES)
    assert isinstance(family.HF_OPTIONAL_PREFIXES, tuple)
    assert all(isinstance(p, str) and p.endswith(".") for p in family.HF_OPTIONAL_PREFIXES)
    for pattern in family.HF_IGNORED:
        re.compile(pattern)
    assert isinstance(family.Config, type) and callable(family.Config.from_hf)
    assert isinstance(TINY[family], family.Config) and isinstance(TINY[family], FamilyConfig)
    assert isinstance(family.GGUF_ARCHITECTURES, Mapping)
    assert all(isinstance(a, str) and isinstance(p, bool) for a, p in family.GGUF_ARCHITECTURES.items())
    if family.GGUF_ARCHITECTURES:
        assert isinstance(family, GGUFFamily)
        for name in GGUF_CALLABLES:
            assert callable(getattr(family, name)), name


def test_a_module_missing_a_member_is_not_a_family():
    """The check above can fail: drop any one member and the module no longer satisfies the protocol."""
    members = _members(GGUFFamily) + _members(FamilyProtocol)
    assert {"HF_ARCHITECTURES", "Config", "HF_IGNORED", "HF_OPTIONAL_PREFIXES", "GGUF_ARCHITECTURES", "GGUF_NAMES",
            "GGUF_BLOCK_NAMES", "config_from_gguf", "gguf_to_hf", *CALLABLES} <= set(members)
    for name in set(members):
        stub = types.SimpleNamespace(**{n: getattr(llama, n) for n in members if n != name})
        assert not isinstance(stub, GGUFFamily), name
    assert isinstance(types.SimpleNamespace(**{n: getattr(llama, n) for n in members}), GGUFFamily)


def test_registries_hold_the_registered_families():
    assert HF_FAMILIES == {a: f for f in FAMILIES for a in f.HF_ARCHITECTURES}
    assert len(HF_FAMILIES) == sum(len(f.HF_ARCHITECTURES) for f in FAMILIES)  # no architecture claimed twice
    assert GGUF_FAMILIES == {a: f for f in FAMILIES for a in f.GGUF_ARCHITECTURES}
    assert set(GGUF_FAMILIES.values()) == {llama, gemma}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__.rsplit(".", 1)[-1])
def test_listed_tensors_are_exactly_what_the_loader_reads(family):
    config = TINY[family]
    shapes = family.hf_weight_shapes(config)
    assert family.hf_weight_names(config) == list(shapes)
    assert len(shapes) > 12 * config.n_layers  # the optional biases and norms switched on above are listed
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    read = []
    model = family.from_hf_weights(config, lambda name: read.append(name) or tensors[name])
    assert read == list(shapes)
    assert model.W_E.shape == (config.vocab_size, config.d_model) and len(model.blocks) == config.n_layers
    # a tensor of another shape than the config implies is refused, named
    name = f"{next(n for n in shapes if '.0.' in n and len(shapes[n]) == 2)}"
    bad = {**tensors, name: tensors[name][:, :-1]}
    with pytest.raises(ValueError, match=re.escape(f"tensor '{name}' has shape")):
        family.from_hf_weights(config, bad.__getitem__)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__.rsplit(".", 1)[-1])
def test_config_round_trips_through_config_json(family):
    config = TINY[family]
    cfg = config.to_hf()
    assert cfg["architectures"][0] in family.HF_ARCHITECTURES
    assert family.Config.from_hf(cfg) == config


@pytest.mark.parametrize("family", list(dict.fromkeys(GGUF_FAMILIES.values())),
                         ids=lambda f: f.__name__.rsplit(".", 1)[-1])
def test_gguf_names_land_on_listed_tensors(family):
    listed = set(family.hf_weight_shapes(TINY[family]))
    hf = set(family.GGUF_NAMES.values()) | {f"model.layers.0.{n}" for n in family.GGUF_BLOCK_NAMES.values()}
    assert hf - {"lm_head.weight"} <= listed
