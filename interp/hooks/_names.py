"""Hook-point names: TransformerLens-style short names and nearest-name suggestions."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_BLOCK = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
_ATTN = {"q", "k", "v", "rot_q", "rot_k", "z", "attn_scores", "pattern"}
_MLP = {"pre", "post", "pre_linear"}
_LN = {"scale", "normalized"}
_TOP = {"embed", "pos_embed"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "result": "z"}

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short one, as in TransformerLens's ``utils.get_act_name``.

    ``act_name("resid_post", 5)`` -> ``"blocks.5.hook_resid_post"``;
    ``act_name("pattern", 3)`` -> ``"blocks.3.attn.hook_pattern"``;
    ``act_name("scale", 2, "ln1")`` -> ``"blocks.2.ln1.hook_scale"``;
    ``act_name("normalized")`` -> ``"ln_final.hook_normalized"``; ``act_name("embed")`` -> ``"hook_embed"``.
    Full names pass through unchanged.
    """
    if "." in name or name.startswith("hook_"):
        return name
    name = _ALIASES.get(name, name)
    if name in _TOP:
        return f"hook_{name}"
    if name in _LN:
        if layer is None:
            return f"ln_final.hook_{name}"
        if layer_type not in ("ln1", "ln2"):
            raise KeyError(
                f"'{name}' at layer {layer} needs layer_type 'ln1' or 'ln2', e.g. cache['{name}', {layer}, 'ln1']"
            )
        return f"blocks.{layer}.{layer_type}.hook_{name}"
    if layer is None:
        raise KeyError(f"the short name {name!r} needs a layer index: ({name!r}, 0) or act_name({name!r}, 0); "
                       f"run_with_cache(tokens, names={name!r}) captures it at every layer")
    if name in _BLOCK:
        return f"blocks.{layer}.hook_{name}"
    if name in _ATTN:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP:
        return f"blocks.{layer}.mlp.hook_{name}"
    known = sorted(_BLOCK | _ATTN | _MLP | _LN | _TOP)
    raise KeyError(f"unknown short hook name '{name}'{suggest(name, known)}")


def layer_of(name: str) -> int | None:
    """The block index a hook name belongs to, or None for names outside the blocks."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def suggest(name: str, vocabulary: Iterable[str], n: int = 3) -> str:
    """'; did you mean ...?' text for an unknown name (empty when nothing is close)."""
    close = difflib.get_close_matches(name, list(vocabulary), n=n, cutoff=0.5)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
