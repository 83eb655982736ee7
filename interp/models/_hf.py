"""What the family files share when reading Hugging Face ``config.json`` dicts."""

from __future__ import annotations

from collections.abc import Mapping


def first(v):
    """A token id that configs may give as a list (several end-of-sequence ids): the first one."""
    return v[0] if isinstance(v, (list, tuple)) else v


def rope_scaling(params: Mapping | None, family: str, supported: tuple[str, ...] = ("linear",)) -> tuple | None:
    """:class:`~interp.models._blocks.Rope` ``scaling`` from one set of rotary parameters (a ``rope_scaling`` or
    ``rope_parameters`` dict): None for the default rotary, else ``("linear", factor)`` or
    ``("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)``."""
    params = params or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in ("default", None):
        return None
    if kind == "linear" and kind in supported:
        return ("linear", float(params["factor"]))
    if kind == "llama3" and kind in supported:
        return ("llama3", float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"]),
                int(params["original_max_position_embeddings"]))
    raise ValueError(f"rope type '{kind}' in config.json is not supported by the {family} family; "
                     f"supported: {', '.join(('default',) + tuple(supported))}")
