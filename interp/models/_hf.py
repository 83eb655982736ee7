"""What the family files share when reading checkpoint configs: typed fields of ``config.json`` (or GGUF metadata)
whose errors name the file and the field, and the checks every family config runs on itself."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

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


def llama_layout_shapes(config, *, qkv_bias: bool, o_bias: bool, mlp_bias: bool, qk_norm: bool) -> dict:
    """The tensors (and shapes, torch's ``[out, in]``) of a checkpoint in the layout Llama, Mistral, Qwen and Gemma
    share: ``model.embed_tokens``, ``model.norm``, ``lm_head`` unless tied, and per layer two norms, ``self_attn``'s
    four projections and ``mlp``'s three, with optional biases and per-head query/key norms."""
    V, D, F, E = config.vocab_size, config.d_model, config.d_mlp, config.d_head
    HE, KE = config.n_heads * E, config.n_kv_heads * E
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(config.n_layers):
        p, a, m = f"model.layers.{i}", f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        shapes.update({f"{p}.input_layernorm.weight": (D,), f"{p}.post_attention_layernorm.weight": (D,),
                       f"{a}.q_proj.weight": (HE, D), f"{a}.k_proj.weight": (KE, D), f"{a}.v_proj.weight": (KE, D),
                       f"{a}.o_proj.weight": (D, HE),
                       f"{m}.gate_proj.weight": (F, D), f"{m}.up_proj.weight": (F, D), f"{m}.down_proj.weight": (D, F)})
        if qk_norm:
            shapes.update({f"{a}.q_norm.weight": (E,), f"{a}.k_norm.weight": (E,)})
        if qkv_bias:
            shapes.update({f"{a}.q_proj.bias": (HE,), f"{a}.k_proj.bias": (KE,), f"{a}.v_proj.bias": (KE,)})
        if o_bias:
            shapes[f"{a}.o_proj.bias"] = (D,)
        if mlp_bias:
            shapes.update({f"{m}.gate_proj.bias": (F,), f"{m}.up_proj.bias": (F,), f"{m}.down_proj.bias": (D,)})
    return shapes


# Names checkpoints in that layout may hold that carry no weights of the model: a tied head saved anyway (transformers
# ties it to the embedding on load), rotary frequencies older transformers versions stored as buffers.
LLAMA_LAYOUT_IGNORED = (r"lm_head\.weight", r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


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
