"""interp: look inside language models from Jupyter, in JAX.

    >>> import interp
    >>> model = interp.load()                      # SmolLM2-135M-Instruct, packaged
    >>> logits, cache = model.run_with_cache("The capital of France is")
    >>> cache["resid_post", 5].shape
"""

from interp._allocator import allocator_settings, tune_allocator

tune_allocator()  # before JAX starts its threads: see interp/_allocator.py

from interp._compilation_cache import compilation_cache_dir, enable_compilation_cache  # noqa: E402

enable_compilation_cache()  # before anything compiles: the imports below are placed after it on purpose

from interp import hooks, models, weights  # noqa: E402
from interp._version import __version__ as __version__  # noqa: E402
from interp.hooks import (  # noqa: E402
    Cache,
    Edit,
    Hooks,
    act_name,
    any_length,
    compile_count,
    compile_stats,
    edits,
)
from interp.models import (  # noqa: E402
    FactoredMatrix,
    LlamaConfig,
    Model,
    check_tokens,
    length_buckets,
    set_length_buckets,
)
from interp.models.sharding import shard  # noqa: E402
from interp.weights import load, load_gguf, load_hf_dir, save_hf_dir  # noqa: E402
from interp.weights.tokenize import Tokenizer  # noqa: E402
from interp.wrap import wrap  # noqa: E402

__all__ = [
    "Cache", "Edit", "Hooks", "LlamaConfig", "Model", "Tokenizer", "act_name", "allocator_settings", "any_length",
    "check_tokens",
    "compilation_cache_dir", "compile_count", "compile_stats", "edits", "enable_compilation_cache", "hooks",
    "length_buckets", "load", "load_gguf", "load_hf_dir", "models", "save_hf_dir", "set_length_buckets", "weights",
    "FactoredMatrix", "shard", "wrap",
]
