"""Hook points: capture any named activation, edit it with pure functions, take gradients through it.

The vocabulary follows TransformerLens (``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_pattern``,
...); see ``Model.hook_names`` for a model's full list.
"""

from interp.hooks import edits
from interp.hooks._cache import Cache, Pending
from interp.hooks._compiles import CompileStats, compile_count, compile_stats
from interp.hooks._names import act_name, layer_of, suggest
from interp.hooks._spec import (
    NOOP,
    Edit,
    EditFn,
    HookRunner,
    Hooks,
    Resolved,
    ShapeRecorder,
    any_length,
)
from interp.hooks._splice import Splice

__all__ = [
    "Cache",
    "Pending",
    "CompileStats",
    "Edit",
    "EditFn",
    "HookRunner",
    "NOOP",
    "Hooks",
    "Resolved",
    "ShapeRecorder",
    "Splice",
    "act_name",
    "any_length",
    "compile_count",
    "compile_stats",
    "edits",
    "layer_of",
    "suggest",
]
