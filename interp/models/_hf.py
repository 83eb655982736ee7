"""What the family files share when reading checkpoints: typed fields of ``config.json`` (or GGUF metadata) whose
errors name the file and the field, the checks every family config runs on itself, the reader a family's loader
takes its tensors through (which also lists them: :func:`weight_listings`), and the tensor layout Llama, Mistral,
Qwen and Gemma share (:func:`llama_layout_model`, its GGUF names)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real

import jax.numpy as jnp
import numpy as np

from interp.models._blocks import Attention, Embed, GatedMLP, PreNormBlock
from interp.models._model import Model

_REQUIRED = object()
# Far above any model's depth; configs are read before any tensor, and per-layer lists are built from this count.
MAX_LAYERS = 1 << 16


class Fields:
    """Typed reads of one config mapping. ``where`` names the file in errors, ``prefix`` is the namespace of the
    keys read (a GGUF file's ``"llama."``), ``parent`` the enclosing field of a nested object (``"rope_scaling."``),
    and ``fix`` what errors advise."""

    def __init__(self, cfg, where="config.json", prefix: str = "",
                 fix: str = "fix it or use the config saved with these weights", parent: str = ""):
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{where} must hold a JSON object, got {type(cfg).__name__}; "
                             "use the config.json saved with these weights")
        self.cfg, self.where, self.prefix, self.fix, self.parent = cfg, str(where), prefix, fix, parent

    def _label(self, name: str) -> str:
        return f"'{self.parent}{self.prefix}{name}'"

    def error(self, name: str, problem: str) -> ValueError:
        return ValueError(f"{self.where}: field {self._label(name)} {problem}; {self.fix}")

    def present(self, name: str) -> bool:
        """Whether the field is there at all (null counts as there)."""
        return self.prefix + name in self.cfg

    def raw(self, name: str, default=None):
        """The value as stored (``default`` when absent or null)."""
        value = self.cfg.get(self.prefix + name)
        return default if value is None else value

    def _value(self, name, default, aliases=()):
        for n in (name, *aliases):
            if self.raw(n) is not None:
                return n, self.raw(n)
        if default is _REQUIRED:
            also = "".join(f" (or {self._label(a)})" for a in aliases)
            raise ValueError(f"{self.where}: field {self._label(name)}{also} is missing, and a checkpoint of this "
                             f"family needs it; {self.fix}")
        return name, default

    def int(self, name: str, default=_REQUIRED, *, aliases=(), min: int = 1, max: int | None = None) -> int | None:
        """An integer of at least ``min`` and at most ``max`` (``default`` when absent or null)."""
        name, v = self._value(name, default, aliases)
        if v is not None and (isinstance(v, bool) or not isinstance(v, Integral) or v < min):
            raise self.error(name, f"must be a {'positive' if min == 1 else f'>= {min}'} integer, got {_short(v)}")
        if v is not None and max is not None and v > max:
            raise self.error(name, f"must be at most {max}, got {v}")
        return v if v is None else int(v)

    def layers(self, name: str, *, aliases=()) -> int:
        """A layer count."""
        return self.int(name, aliases=aliases, max=MAX_LAYERS)

    def opt_int(self, name: str, default=None, *, aliases=(), min: int = 1) -> int | None:
        """``default`` when the field is absent, None when it is null."""
        present = any(self.present(n) for n in (name, *aliases))
        return self.int(name, None, aliases=aliases, min=min) if present else default

    def float(self, name: str, default=_REQUIRED, *, positive: bool = True) -> float | None:
        """A finite number, positive unless ``positive=False`` (``default`` when absent or null)."""
        name, v = self._value(name, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v)
                              or (positive and v <= 0)):
            raise self.error(name, f"must be a {'positive ' if positive else ''}finite number, got {_short(v)}")
        return v if v is None else float(v)

    def opt_float(self, name: str, default=None, *, positive: bool = True) -> float | None:
        """``default`` when the field is absent, None when it is null."""
        return self.float(name, None, positive=positive) if self.present(name) else default

    def bool(self, name: str, default: bool) -> bool:
        name, v = self._value(name, default)
        if not isinstance(v, bool):
            raise self.error(name, f"must be true or false, got {_short(v)}")
        return v

    def str(self, name: str, default=_REQUIRED) -> str | None:
        name, v = self._value(name, default)
        if v is not None and not isinstance(v, str):
            raise self.error(name, f"must be a string, got {_short(v)}")
        return v

    def token_id(self, name: str) -> int | None:
        """A token id; configs may give a list (several end-of-sequence ids): its first entry."""
        v = self.raw(name)
        ids = v if isinstance(v, list) else [v]
        if v is None or v == []:
            return None
        if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in ids):
            raise self.error(name, f"must be a token id (an integer, a list of integers or null), got {_short(v)}")
        return int(ids[0])

    def str_list(self, name: str, length: int | None = None, *, required: bool = False) -> list[str] | None:
        """A list of strings (of ``length`` entries, one per layer, when given)."""
        _, v = self._value(name, _REQUIRED if required else None)
        if v is not None and (not isinstance(v, list) or not all(isinstance(s, str) for s in v)):
            raise self.error(name, f"must be a list of strings, got {_short(v)}")
        if v is not None and length is not None and len(v) != length:
            raise self.error(name, f"must list {length} entries (one per layer), got {len(v)}")
        return v

    def token_ids(self) -> dict[str, int | None]:
        """``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` (see :meth:`token_id`)."""
        return {name: self.token_id(name) for name in TOKEN_IDS}

    def sub(self, name: str) -> Fields:
        """The nested object ``name`` (empty when absent or null)."""
        v = self.raw(name, {})
        if not isinstance(v, Mapping):
            raise self.error(name, f"must be an object, got {_short(v)}")
        return Fields(v, self.where, fix=self.fix, parent=f"{self.parent}{self.prefix}{name}.")

    def build(self, cls, **kwargs):
        """``cls(**kwargs)``, with the file named in the errors of its own checks."""
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{self.where}: {e}") from None


def gguf_fields(meta: Mapping, arch: str) -> tuple[Fields, Fields]:
    """A GGUF file's metadata as fields: those under ``{arch}.``, and all of them."""
    where, fix = meta.get("__file__", "the GGUF metadata"), "the file is corrupt or was not written for this loader"
    return Fields(meta, where, f"{arch}.", fix), Fields(meta, where, "", fix)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def token_ids_to_hf(config) -> dict:
    """The ``config.json`` fields every family writes alike: the special token ids, and float32 weights."""
    return {**{name: getattr(config, name) for name in TOKEN_IDS}, "torch_dtype": "float32"}


def layout_to_hf(config, arch: str, model_type: str) -> dict:
    """The ``config.json`` fields a Llama-layout config (Llama, Qwen, Gemma) writes alike."""
    return {
        "architectures": [arch], "model_type": model_type, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "intermediate_size": config.d_mlp, "head_dim": config.d_head,
        "rms_norm_eps": config.rms_eps, "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings, "max_position_embeddings": config.max_position,
        **token_ids_to_hf(config),
    }


def check_layout(config) -> None:
    """``__post_init__`` checks of a Llama-layout config: query heads group evenly over the key/value heads, and
    ``sliding_layers`` (when given) names every layer."""
    if config.n_heads % config.n_kv_heads:
        raise ValueError(f"n_heads={config.n_heads} must be a multiple of n_kv_heads={config.n_kv_heads} for "
                         "grouped-query attention")
    if config.sliding_layers is not None and len(config.sliding_layers) != config.n_layers:
        raise ValueError(f"sliding_layers names {len(config.sliding_layers)} layers, the model has {config.n_layers}")


def check_config(config, ints: tuple[str, ...], floats: tuple[str, ...]) -> None:
    """``__post_init__`` checks of a family config: sizes are positive integers, epsilons and rotary bases
    positive finite numbers (``None`` skips an optional one)."""
    name = type(config).__name__
    for f in ints:
        v = getattr(config, f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, Integral) or v <= 0):
            raise ValueError(f"{name}.{f} must be a positive integer, got {_short(v)}")
    for f in floats:
        v = getattr(config, f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v <= 0):
            raise ValueError(f"{name}.{f} must be a positive finite number, got {_short(v)}")


def rope_scaling(params: Fields, family: str, supported: tuple[str, ...] = ("linear",)) -> tuple | None:
    """:class:`~interp.models._blocks.Rope` ``scaling`` from one set of rotary parameters (a ``rope_scaling`` or
    ``rope_parameters`` object): None for the default rotary, else ``("linear", factor)`` or
    ``("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)``."""
    kind = params.raw("rope_type", params.raw("type", "default"))
    if kind == "default":
        return None
    if kind == "linear" and kind in supported:
        return ("linear", params.float("factor"))
    if kind == "llama3" and kind in supported:
        return ("llama3", params.float("factor"), params.float("low_freq_factor"), params.float("high_freq_factor"),
                params.int("original_max_position_embeddings"))
    raise ValueError(f"{params.where}: rope type {kind!r} is not supported by the {family} family; "
                     f"supported: {', '.join(('default',) + tuple(supported))}")


class Tensors:
    """A checkpoint as a family's loader reads it. ``t(name, shape)`` is tensor ``name`` as stored (numpy, the file's
    layout), refused unless it has the ``shape`` the config implies; ``t.arr(x)`` makes it a model array of
    ``dtype``. A name that starts with one of ``optional_prefixes`` is also found without it.

    With a :class:`_Recorder` as ``get`` nothing is read: each name is noted with its shape and zero-strided
    placeholders (no memory) stand in for the arrays, so running the loader lists the checkpoint's tensors from the
    one place that names them (:func:`weight_listings`)."""

    def __init__(self, get: Callable, dtype=jnp.float32, optional_prefixes: tuple[str, ...] = ()):
        self.get, self.dtype, self.prefixes = get, dtype, optional_prefixes
        self.recording = isinstance(get, _Recorder)

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if self.recording:
            self.get.shapes[name] = shape
            return np.broadcast_to(np.zeros((), np.float32), shape)
        try:
            x = self.get(name)
        except KeyError:
            prefix = next((p for p in self.prefixes if name.startswith(p)), None)
            if prefix is None:
                raise
            x = self.get(name[len(prefix):])
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"tensor '{name}' has shape {list(x.shape)}, but the config implies {list(shape)}; "
                             "the weights and the config do not belong together")
        return x

    def arr(self, x, dtype=None):
        """``x`` as a model array of ``dtype`` (default: the model's)."""
        return x if self.recording else jnp.asarray(np.asarray(x), dtype=dtype or self.dtype)

    def weight(self, name: str, shape: tuple[int, ...], fn: Callable | None = None, dtype=None):
        """``arr`` of the stored tensor, as stored or after ``fn`` (numpy to numpy; not run when recording)."""
        x = self(name, shape)
        return self.arr(x if fn is None or self.recording else fn(x), dtype)

    def unembed(self, config, name: str):
        """The unembedding ``[D V]`` from a head stored ``[V D]``; None when tied to the embedding."""
        return None if config.tie_embeddings else self.arr(self(name, (config.vocab_size, config.d_model)).T)


class _Recorder:
    def __init__(self):
        self.shapes: dict[str, tuple[int, ...]] = {}


def weight_listings(from_hf_weights: Callable) -> tuple[Callable, Callable]:
    """A family's ``hf_weight_shapes`` and ``hf_weight_names``, from its loader run without reading anything."""

    def hf_weight_shapes(config) -> dict[str, tuple[int, ...]]:
        """Every tensor a Hugging Face checkpoint of this config holds, with its shape as stored (the names the
        loader reads, in the order it reads them)."""
        recorder = _Recorder()
        from_hf_weights(config, recorder)
        return recorder.shapes

    def hf_weight_names(config) -> list[str]:
        """The tensor names a Hugging Face checkpoint of this config holds."""
        return list(hf_weight_shapes(config))

    return hf_weight_shapes, hf_weight_names


def llama_layout_model(t: Tensors, config, *, norm: Callable, attn_kw: Callable[[int], dict], qkv_bias: bool = False,
                       o_bias: bool = False, mlp_bias: bool = False, post_norms: bool = False, embed_scale=None,
                       tokenizer=None, **model_kw) -> Model:
    """The model of a checkpoint in the layout Llama, Mistral, Qwen and Gemma share (torch's ``[out, in]`` weights):
    ``model.embed_tokens``, ``model.norm``, ``lm_head`` unless tied, and per layer ``self_attn``'s four projections
    (optional biases; per-head ``q_norm``/``k_norm`` when ``config.qk_norm``), ``mlp``'s three (optional biases),
    and norms: ``input_layernorm`` before attention and ``post_attention_layernorm`` before the MLP, or with
    ``post_norms`` (Gemma 2 and 3) ``post_attention_layernorm`` after attention and ``pre_feedforward_layernorm`` /
    ``post_feedforward_layernorm`` around the MLP. ``norm(name, size)`` makes a norm from its stored weight,
    ``attn_kw(layer)`` gives the rest of that layer's :class:`Attention` (rope, sliding_window, scale, softcap);
    ``model_kw`` go to :class:`Model`."""
    V, D, F, H, K, E = (config.vocab_size, config.d_model, config.d_mlp, config.n_heads, config.n_kv_heads,
                        config.d_head)
    # the head before the layers, so that the listing names it next to the embedding
    embed = Embed(t.weight("model.embed_tokens.weight", (V, D)), scale=embed_scale)
    ln_final, unembed = norm("model.norm.weight", D), t.unembed(config, "lm_head.weight")

    def block(i: int) -> PreNormBlock:
        p, a, m = f"model.layers.{i}", f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"

        def proj(name, heads):  # [heads*E D] -> [D heads E]
            return t.arr(t(f"{a}.{name}_proj.weight", (heads * E, D)).T.reshape(D, heads, E))

        def bias(name, heads, on):
            return t.arr(t(f"{a}.{name}_proj.bias", (heads * E,)).reshape(heads, E)) if on else None

        def linear(name, shape):  # a weight [out in] -> [in out], and its bias [out] when mlp_bias
            w = t.arr(t(f"{m}.{name}_proj.weight", shape).T)
            return w, t.weight(f"{m}.{name}_proj.bias", shape[:1]) if mlp_bias else None

        ln1 = norm(f"{p}.input_layernorm.weight", D)
        attn = Attention(
            W_Q=proj("q", H), W_K=proj("k", K), W_V=proj("v", K),
            W_O=t.arr(t(f"{a}.o_proj.weight", (D, H * E)).T.reshape(H, E, D)),
            b_Q=bias("q", H, qkv_bias), b_K=bias("k", K, qkv_bias), b_V=bias("v", K, qkv_bias),
            b_O=t.weight(f"{a}.o_proj.bias", (D,)) if o_bias else None,
            q_norm=norm(f"{a}.q_norm.weight", E) if config.qk_norm else None,
            k_norm=norm(f"{a}.k_norm.weight", E) if config.qk_norm else None,
            **attn_kw(i),
        )
        ln1_post = norm(f"{p}.post_attention_layernorm.weight", D) if post_norms else None
        ln2 = norm(f"{p}.{'pre_feedforward' if post_norms else 'post_attention'}_layernorm.weight", D)
        (W_gate, b_gate), (W_in, b_in) = linear("gate", (F, D)), linear("up", (F, D))
        W_out, b_out = linear("down", (D, F))
        mlp = GatedMLP(W_gate=W_gate, W_in=W_in, W_out=W_out, b_gate=b_gate, b_in=b_in, b_out=b_out, act=config.act)
        ln2_post = norm(f"{p}.post_feedforward_layernorm.weight", D) if post_norms else None
        return PreNormBlock(ln1=ln1, attn=attn, ln2=ln2, mlp=mlp, ln1_post=ln1_post, ln2_post=ln2_post)

    return Model(embed=embed, blocks=tuple(block(i) for i in range(config.n_layers)), ln_final=ln_final,
                 unembed=unembed, config=config, tokenizer=tokenizer, **model_kw)


# Names checkpoints in that layout may hold that carry no weights of the model: a tied head saved anyway (transformers
# ties it to the embedding on load), rotary frequencies older transformers versions stored as buffers.
LLAMA_LAYOUT_IGNORED = (r"lm_head\.weight", r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

# GGUF tensor name -> Hugging Face name in that layout; per block ``blk.{i}.X`` -> ``model.layers.{i}.Y``.
LLAMA_LAYOUT_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LLAMA_LAYOUT_GGUF_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    **{f"attn_{x}.weight": f"self_attn.{x}_proj.weight" for x in "qkv"},
    "attn_output.weight": "self_attn.o_proj.weight",
    **{f"ffn_{x}.weight": f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")},
}


def hf_layout_fields(f: Fields, n_layers: int) -> dict:
    """The config fields every ``config.json`` in that layout states alike: sizes, the RMSNorm epsilon and the special
    token ids."""
    n_heads = f.int("num_attention_heads")
    return dict(vocab_size=f.int("vocab_size"), d_model=f.int("hidden_size"), n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=f.opt_int("num_key_value_heads") or n_heads, d_mlp=f.int("intermediate_size"),
                rms_eps=f.float("rms_norm_eps", 1e-6), **f.token_ids())


def gguf_layout_fields(g: Fields, root: Fields, meta: Mapping) -> dict:
    """The config fields every GGUF file in that layout states alike: sizes, linear rope scaling, whether the head is
    tied (the file has no ``output.weight``) and the special token ids."""
    n_heads = g.int("attention.head_count")
    scaling = ("linear", g.float("rope.scaling.factor")) if g.raw("rope.scaling.type") == "linear" else None
    return dict(
        vocab_size=g.opt_int("vocab_size") or len(root.str_list("tokenizer.ggml.tokens", required=True)),
        d_model=g.int("embedding_length"), n_layers=g.layers("block_count"), n_heads=n_heads,
        n_kv_heads=g.int("attention.head_count_kv", n_heads), d_mlp=g.int("feed_forward_length"),
        rope_scaling=scaling, tie_embeddings="output.weight" not in meta["__tensor_names__"],
        bos_token_id=root.token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=root.token_id("tokenizer.ggml.eos_token_id"),
        pad_token_id=root.token_id("tokenizer.ggml.padding_token_id"),
    )
