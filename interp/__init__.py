"""interp: look inside language models from Jupyter, in JAX.

    >>> import interp
    >>> model = interp.load()                      # SmolLM2-135M-Instruct, packaged
    >>> logits, cache = model.run_with_cache("The capital of France is")
    >>> cache["resid_post", 5].shape
"""

from interp import hooks, models, weights
from interp.hooks import Cache, Edit, Hooks, act_name, compile_count, edits
from interp.models import LlamaConfig, Model, check_tokens
from interp.tokenize import Tokenizer
from interp.weights import load, load_gguf, load_hf_dir

__version__ = "0.1.0"

__all__ = [
    "Cache", "Edit", "Hooks", "LlamaConfig", "Model", "Tokenizer", "act_name", "check_tokens", "compile_count", "edits",
    "hooks", "load", "load_gguf", "load_hf_dir", "models", "weights",
]
