"""Hook points: capture any named activation, edit it with pure functions, take gradients through it.

The vocabulary follows TransformerLens (``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_pattern``,
...); see ``Model.hook_names`` for a model's full list.
"""

from interp.hooks import edits
from interp.hooks._cache import Cache, Computed, Pending
from interp.hooks._compiles import CompileStats, compile_count, compile_stats
from interp.hooks._names import act_name, layer_of, suggest
from interp.hooks._spec import (
    NOOP,
    Derived,
    Edit,
    EditFn,
    HookRunner,
    Hooks,
    Resolved,
    ShapeRecorder,
    any_length,
    derived,
)
from interp.hooks._splice import Splice

__all__ = [
    "Cache",
    "Computed",
    "Pending",
    "CompileStats",
    "Derived",
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
    "derived",
    "edits",
    "layer_of",
    "suggest",
]
