"""Shared fixtures: tiny random-init Hugging Face checkpoints built locally, and the packaged default model.

Tiers. Every test is marked from what it uses, so that no decorator can be forgotten:

- ``slow``: a fixture it uses (directly or through other fixtures) loads a packaged real model: its source calls
  ``interp.load("...")``, ``ensure_default(...)`` or ``default_gguf_path("...")`` with a packaged name, as
  ``default_model`` and ``default_gguf`` do.
- ``torch``: its module imports torch or transformers (anywhere in the file), or the helpers here that build
  transformers models (``make_hf_model``, ``saved_checkpoints``, ``hf_logits_head_zeroed``); or a conftest
  fixture it uses does (``hf_checkpoints``).
- ``browser``, ``notebook``: it lives in ``tests/browser`` or ``tests/notebooks``.
- ``heavy``: it is named in ``HEAVY`` below (long on tiny models alone), or carries the decorator.

``make test-fast`` runs ``-m "not slow and not torch and not browser and not notebook and not heavy"``. When the mark
expression leaves out every torch test, modules that import torch are not even imported, and importing torch or
transformers fails with a message saying to mark the test: a test that reaches torch some other way is caught
rather than silently slowing the fast tier.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
import numpy as np
import pytest

try:  # pytest's own parser of -m expressions (not public API): without it, torch is never left out of collection
    from _pytest.mark.expression import Expression
except ImportError:
    Expression = None

jax.config.update("jax_numpy_dtype_promotion", "strict")

TESTS = Path(__file__).resolve().parent
FOLDER_MARKS = {"browser": "browser", "notebooks": "notebook"}
TORCH_MODULES = ("torch", "transformers")
TORCH_HELPERS = ("make_hf_model", "saved_checkpoints", "hf_logits_head_zeroed")
TORCH_SOURCE = re.compile(r"\b(?:import torch|import transformers|from (?:torch|transformers)\b|"
                          + "|".join(TORCH_HELPERS) + r")\b")
# A packaged real model: interp.load/ensure_default/default_gguf_path with a literal name (or none, the default).
REAL_MODEL_SOURCE = re.compile(r"""\binterp\.load\(\s*["']|\bensure_default\(\s*(?:\)|["'])|"""
                               r"""\bdefault_gguf_path\(\s*(?:\)|["'])""")
MARKERS = ("slow", "torch", "browser", "notebook", "heavy")
# Tests that take long on tiny models alone (compiling gradients, training runs): marked ``heavy``, so left out of
# `make test-fast` and kept in `make test`. A module path marks the whole module. Seconds: one run of the fast tier
# on the 2-core machine, under load.
# Parametrized tests whose cases are long and independent (a notebook each): `--dist loadfile` spreads them over the
# test workers one by one (see pytest_xdist_make_scheduler) while every other file's tests stay in one worker.
SPREAD = ("tests/notebooks/test_notebooks.py::test_notebook_runs",)
# Work units (files, or spread cases) that take minutes, longest first (seconds: one `make test` on the 2-core
# machine). They go out first: xdist otherwise hands out files with the most tests first, so single long cases came
# last and one worker ran them alone at the end.
LONG_FIRST = (
    "tests/notebooks/test_notebooks.py::test_notebook_runs[12_feature_absorption]",  # 207 s
    "tests/notebooks/test_notebooks.py::test_notebook_runs[11_sae_scaling]",  # 175 s
    "tests/organisms/test_default_model.py",  # 150 s
    "tests/test_demo.py",  # 124 s
    "tests/notebooks/test_notebooks.py::test_notebook_runs[04_circuit_tracing]",  # 103 s
    "tests/notebooks/test_notebooks.py::test_notebook_runs[09_induction_heads]",  # 82 s
    "tests/models/test_gemma3_270m.py",  # 68 s and more
    "tests/notebooks/test_notebooks.py::test_notebook_runs[10_grokking]",  # 63 s
    "tests/browser/test_interp_views.py",  # 60 s and more
    "tests/notebooks/test_notebooks.py::test_notebook_runs[07_autointerp]",  # 57 s
)
HEAVY = (
    "tests/circuits/test_graph_toy.py",  # trains its toy model first: 43 s, then 13 s, 5 s, 3 s
    "tests/sae/test_architectures.py::test_topk_gradient_matches_dense_reference",  # 20 s
    "tests/sae/test_architectures.py::test_standard_loss_and_gradient_by_hand",  # 7 s
    "tests/sae/test_architectures.py::test_transcoder_with_skip",  # 7 s
    "tests/sae/test_architectures.py::test_batchtopk_selects_over_the_batch",  # 6 s
    "tests/sae/test_architectures.py::test_matryoshka_averages_prefix_losses",  # 5 s
    "tests/sae/test_training.py::test_sharded_training_equals_single_device",  # 15 s
    "tests/sae/test_training.py::test_input_normalization_is_folded_into_the_saved_weights",  # 11 s
    "tests/sae/test_training.py::test_auxk_revives_latents_dead_by_construction",  # 7 s
    "tests/sae/test_transcoders.py::test_train_all_layers_in_one_pass",  # 13 s
    "tests/viz/test_widgets.py::test_graph_explorer_click_and_intervention",  # 10 s
)


@functools.cache
def module_uses_torch(path: Path) -> bool:
    """Whether a test module imports torch or transformers (``import``, ``pytest.importorskip``), the helpers here
    that build transformers models, or another test module that does."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "tests.conftest":
                if any(a.name in TORCH_HELPERS for a in node.names):
                    return True
                continue
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "importorskip"):
            names = [str(node.args[0].value)]
        else:
            continue
        for name in names:
            if name.split(".")[0] in TORCH_MODULES:
                return True
            other = TESTS.parent / (name.replace(".", "/") + ".py")
            if name.startswith("tests.") and other.exists() and module_uses_torch(other):
                return True
    return False


@functools.cache
def fixture_source(func) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def torch_excluded(config) -> bool:
    """Whether the ``-m`` expression rejects every test marked ``torch``, whatever its other markers."""
    expr = config.getoption("markexpr", "")
    if not expr or Expression is None:
        return False
    compiled = Expression.compile(expr)
    others = [m for m in MARKERS if m != "torch"]
    for n in range(len(others) + 1):
        for subset in itertools.combinations(others, n):
            names = {"torch", *subset}
            if compiled.evaluate(lambda name, names=names, **kwargs: name in names):
                return False
    return True


def pytest_configure(config):
    if torch_excluded(config):
        sys.meta_path.insert(0, _NoTorch())


def pytest_ignore_collect(collection_path, config):
    # With torch left out, the modules that import it are not imported at all (torch and transformers take
    # seconds to import).
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and torch_excluded(config):
        return module_uses_torch(collection_path) or None
    return None


class _NoTorch:
    """A meta-path finder that refuses torch and transformers, for runs whose mark expression leaves them out."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TORCH_MODULES:
            raise ImportError(
                f"{name} is imported by a test that is not marked 'torch' while this run leaves torch out "
                f"(-m excludes it); the marker comes from {Path(__file__).name}: import torch/transformers (or "
                f"{', '.join(TORCH_HELPERS)}) in the test module, or add `pytestmark = pytest.mark.torch`")
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # tryfirst: the markers must be on the items before -m deselects by them.
    for item in items:
        path = Path(item.path).resolve()
        for folder, mark in FOLDER_MARKS.items():
            if TESTS / folder in path.parents:
                item.add_marker(mark)
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        sources = [fixture_source(f) for f in fixtures]
        if any(REAL_MODEL_SOURCE.search(s) for s in sources):
            item.add_marker("slow")
        if (path.suffix == ".py" and module_uses_torch(path)) or any(TORCH_SOURCE.search(s) for s in sources):
            item.add_marker("torch")
        if any(item.nodeid == h or item.nodeid.startswith((f"{h}::", f"{h}[")) for h in HEAVY):
            item.add_marker("heavy")
        # with `-n N --dist loadgroup` (make test) a file's tests stay in one worker, so that its module fixtures
        # are built once; the long tests that share nothing but the session's fixtures are spread one by one

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=48, rms_norm_eps=1e-5, max_position_embeddings=64)

# name -> (config class, overrides)
VARIANTS = {
    "mha": ("LlamaConfig", {}),
    "gqa": ("LlamaConfig", {"num_key_value_heads": 2}),
    "mqa": ("LlamaConfig", {"num_key_value_heads": 1}),
    "tied": ("LlamaConfig", {"tie_word_embeddings": True, "num_key_value_heads": 2}),
    "head_dim": ("LlamaConfig", {"head_dim": 16, "num_key_value_heads": 2}),
    "biases": ("LlamaConfig", {"attention_bias": True, "mlp_bias": True}),
    "llama3_rope": ("LlamaConfig", {"num_key_value_heads": 2, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, "rope_theta": 500000.0}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    "mistral_window": ("MistralConfig", {"num_key_value_heads": 2, "sliding_window": 5}),
}


def make_hf_model(variant: str, seed: int = 0, **overrides):
    """A tiny random-init ``transformers`` causal LM (eager attention), with random norm weights and biases
    so that every weight has a visible effect."""
    from tests.models.parity import tiny_transformers

    cls_name, variant_overrides = VARIANTS[variant]
    return tiny_transformers(cls_name, {**TINY, **variant_overrides, **overrides}, seed)


def saved_checkpoints(make, tmp_path_factory):
    """``get(variant) -> (transformers model, folder it is saved in)``, built by ``make(variant)`` once each."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            model = make(variant)
            folder = tmp_path_factory.mktemp(f"hf-{variant}")
            model.save_pretrained(folder, safe_serialization=True)
            cache[variant] = (model, folder)
        return cache[variant]

    return get


# Memory maps in use past which the compiled programs are dropped: one test module has needed ~23,000, and the
# kernel's limit is 65,530 by default.
MAX_MAPS_KEPT = 25_000


def _maps_in_use() -> int | None:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no count to go by
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory compiled programs after a test module once many memory maps are in use. XLA keeps every
    program it compiles mapped for the life of the process (several memory maps each); the whole suite compiles
    thousands, past the kernel's limit on maps per process (``vm.max_map_count``, 65530 by default), where the next
    compilation segfaults. Below the mark the programs stay, so later modules reuse them."""
    yield
    n = _maps_in_use()
    if n is None or n > MAX_MAPS_KEPT:
        jax.clear_caches()


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """variant -> (transformers model, saved checkpoint folder)."""
    return saved_checkpoints(make_hf_model, tmp_path_factory)


def numpy_checkpoint(folder: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random-init Llama checkpoint folder (``config.json`` + ``model.safetensors``) written from numpy
    alone, initialized as :func:`make_hf_model` does (weights N(0, 0.1), norm weights 1 + N(0, 0.3), biases
    N(0, 0.1)), for tests that need a model but no reference to compare it with (no torch)."""
    import safetensors.numpy

    from interp.models import llama

    hf_cfg = {**TINY, **overrides, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    cfg = llama.LlamaConfig.from_hf(hf_cfg)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in llama.hf_weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            tensors[name] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            tensors[name] = 0.1 * rng.standard_normal(shape)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file({k: v.astype(np.float32) for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg.to_hf(), indent=1))
    return folder


@pytest.fixture(scope="session")
def tiny3(tmp_path_factory):
    """A tiny three-layer GQA model (interp), for tools that need more than two layers; built without torch."""
    import interp

    folder = numpy_checkpoint(tmp_path_factory.mktemp("tiny-gqa3"), seed=3, num_hidden_layers=3,
                              num_key_value_heads=2)
    return interp.load(folder)


@pytest.fixture(scope="session")
def default_model():
    """The packaged SmolLM2-135M-Instruct (fetched and converted into the user cache on first use)."""
    import interp

    return interp.load("smollm2-135m")


@pytest.fixture(scope="session")
def default_gguf():
    from interp.weights import default_gguf_path

    return default_gguf_path("smollm2-135m")


def random_tokens(vocab: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def left_padded(vocab: int, lengths, seed: int = 0, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of ``lengths`` left-padded with ``pad`` to the longest: ``(tokens [B, T], mask [B, T])``."""
    T = max(lengths)
    toks = random_tokens(vocab, (len(lengths), T), seed=seed)
    mask = np.zeros((len(lengths), T), np.int32)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
        toks[i, : T - n] = pad
    return toks, mask


CORPORA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """Real English text: WikiText-2 validation split from the shared corpora (a built-in text if absent)."""
    path = CORPORA / "wikitext2" / "valid.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics.values())


def hf_logits_head_zeroed(hf, tokens, layer: int, head: int) -> np.ndarray:
    """transformers' logits with the ``o_proj`` input columns of one head zeroed (the reference ablation)."""
    import torch

    E = getattr(hf.config, "head_dim", None) or hf.config.hidden_size // hf.config.num_attention_heads

    def zero_head(mod, args):
        x = args[0].clone()
        x[..., head * E:(head + 1) * E] = 0.0
        return (x,)

    h = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            return hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
    finally:
        h.remove()


def random_transcoders(model, width=24, k=4, seed=0):
    """Random-init TopK transcoders for every layer of ``model`` (first position skipped)."""
    import jax

    from interp import sae
    from interp.circuits import graph as G

    ds = []
    for l in range(model.n_layers):
        cfg = sae.TopKConfig(d_in=model.d_model, width=width, k=k, hook_name=G.HOOK_IN.format(layer=l),
                             hook_name_out=G.HOOK_OUT.format(layer=l))
        ds.append(sae.create(cfg, jax.random.key(seed + l)))
    return G.Transcoders(tuple(ds), skip_positions=1)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running fake Hub (tests/hub_server.py), with HF_ENDPOINT pointing at it and the Hub cache in ``tmp_path``,
    online."""
    import huggingface_hub.constants

    from tests.hub_server import FakeHub

    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
            monkeypatch.delenv(name, raising=False)
        # huggingface_hub reads HF_HUB_OFFLINE once, at import (this file sets it for the whole run)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadfile`` (make test): each file's tests in one worker, so that its module fixtures are built
    once, except the cases of the :data:`SPREAD` tests, which go out one by one."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesSpreadingSome(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            if any(nodeid.startswith(f"{s}[") for s in SPREAD):
                return nodeid
            return nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the queue is complete before the first unit goes out: the long units lead it
                self.ordered = True
                rank = {scope: i for i, scope in enumerate(LONG_FIRST)}
                units = sorted(self.workqueue.items(), key=lambda unit: rank.get(unit[0], len(rank)))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return FilesSpreadingSome(config, log)
