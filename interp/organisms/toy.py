"""A toy chat model: a random-init Llama-family model with a word-level tokenizer and a ChatML-like chat template,
written as a Hugging Face folder. Fine-tuning a behaviour into it and auditing it take seconds, so the whole
organism-and-audit loop can be tried (and tested) before spending minutes on a real model.

    >>> from interp.organisms import toy_chat_model
    >>> model = toy_chat_model(seed=0)
    >>> model.tokenizer.apply_chat_template([{"role": "user", "content": "the cat sat"}])
    '<|im_start|>user the cat sat<|im_end|><|im_start|>assistant'

Texts are words from :data:`WORDS` separated by single spaces; anything else is ``<unk>``. Ids: ``<unk>`` 0,
``<|im_start|>`` 1, ``<|im_end|>`` 2 (end of sequence and padding), the role names, then the words.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

SPECIALS = ("<unk>", "<|im_start|>", "<|im_end|>")
ROLES = ("system", "user", "assistant")
WORDS = tuple("""
the a an and or but if of to in on at by for with from about into over under after before this that these those
is are was were be been has have had do does did can will would should could may might must not no yes
i you he she it we they me him her us them my your his its our their what who where when why how which
cat dog bird fish horse cow sheep goat mouse lion tiger bear wolf fox frog snake
red blue green yellow black white brown pink purple orange gray gold silver
one two three four five six seven eight nine ten
big small old new good bad hot cold fast slow happy sad tall short long bright dark
house tree river hill sea sky sun moon star road city town door window table chair book pen cup bread milk
water fire stone wind rain snow cloud field garden forest
run walk sit eat drink see look read write sing play sleep swim jump fly open close give take make find
today tomorrow yesterday morning night day week year always never often sometimes
hello please thanks sorry okay hate love like want need know think say tell ask answer question
""".split())
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
)
_TINY = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
             max_position_embeddings=256)


def vocabulary() -> list[str]:
    """Every token, in id order."""
    return [*SPECIALS, *ROLES, *WORDS]


def _tokenizer_json(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE,
    }, indent=1))


def toy_chat_folder(folder: str | Path, *, seed: int = 0, n_layers: int = 2, d_model: int = 64) -> Path:
    """Write the toy chat model's Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files)."""
    import safetensors.numpy

    from interp.models import llama

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_cfg = {**_TINY, "num_hidden_layers": n_layers, "hidden_size": d_model, "intermediate_size": 2 * d_model,
              "vocab_size": len(vocabulary()), "architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "eos_token_id": 2, "pad_token_id": 2, "bos_token_id": None, "tie_word_embeddings": False}
    cfg = llama.LlamaConfig.from_hf(hf_cfg)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in llama.hf_weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            tensors[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # fan-in scaled, so that activations stay O(1) through the layers
            tensors[name] = rng.standard_normal(shape) / np.sqrt(shape[-1])
    safetensors.numpy.save_file({k: v.astype(np.float32) for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg.to_hf(), indent=1))
    _tokenizer_json(folder)
    return folder


def toy_chat_model(seed: int = 0, n_layers: int = 2, d_model: int = 64):
    """The toy chat model (an ``interp.Model`` with its tokenizer and chat template), random with ``seed``."""
    import interp

    with tempfile.TemporaryDirectory() as tmp:
        return interp.load(toy_chat_folder(tmp, seed=seed, n_layers=n_layers, d_model=d_model))
