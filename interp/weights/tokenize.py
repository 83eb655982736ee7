"""Tokenizers: a thin wrapper over Hugging Face ``tokenizers``, built from ``tokenizer.json`` or a GGUF vocabulary."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

# Longest SentencePiece piece read from a GGUF file: real vocabularies stay far below it.
_MAX_PIECE = 1024
# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED = 3, 4

# llama.cpp pre-tokenizer names -> the splits its tokenizer applies before byte-level BPE.
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_pre(pre: str | None):
    bytelevel = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated")
        return pre_tokenizers.Sequence([split, bytelevel])
    if pre in ("qwen2",):
        split = pre_tokenizers.Split(Regex(_LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")), behavior="isolated")
        return pre_tokenizers.Sequence([split, bytelevel])
    steps = []
    if pre in ("smollm", "starcoder", "refact", "codeshell", "command-r"):
        # These split every digit on its own before the GPT-2 pattern (as the original tokenizers do).
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    return pre_tokenizers.Sequence(steps)


class Tokenizer:
    """Text <-> ids with the checkpoint's BOS rule. Hashable by identity (it is static model metadata)."""

    def __init__(self, tok: _HFTokenizer, *, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None, add_bos: bool = False, chat_template: str | None = None):
        self.hf = tok
        self.chat_template = chat_template  # Jinja source from the checkpoint, None when it has none
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
        self.add_bos = add_bos

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: str | Path, config: Mapping | None = None) -> Tokenizer:
        """From ``tokenizer.json``; BOS/EOS/pad ids from the checkpoint's config (and tokenizer_config.json)."""
        path = Path(path)
        try:
            tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for every kind of damage
            raise ValueError(
                f"cannot read the tokenizer {path} ({e}); it is damaged or was written by a newer `tokenizers`: fix it "
                "or copy it again, or remove it to load the model without a tokenizer"
            ) from None
        config = dict(config or {})
        tc_path = path.parent / "tokenizer_config.json"
        tc = _json_object(tc_path) if tc_path.exists() else {}

        def tid(key):
            v = tc.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            return tok.token_to_id(v) if isinstance(v, str) else None

        bos = config.get("bos_token_id", tid("bos_token"))
        eos = config.get("eos_token_id", tid("eos_token"))
        eos = eos[0] if isinstance(eos, list) else eos
        pad = config.get("pad_token_id", tid("pad_token"))
        # The rule lives in tokenizer.json's post-processor: see whether it inserts BOS.
        add_bos = (bos is not None and tok.encode("a").ids[:1] == [bos]
                   and tok.encode("a", add_special_tokens=False).ids[:1] != [bos])
        template = tc.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(tok, bos_id=bos, eos_id=eos, pad_id=pad, add_bos=add_bos,
                   chat_template=template if isinstance(template, str) else None)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping) -> Tokenizer:
        """From a GGUF file's ``tokenizer.ggml.*`` metadata: byte-level BPE ("gpt2") or SentencePiece ("llama")."""
        _check_gguf_vocab(meta)
        kind = meta.get("tokenizer.ggml.model")
        tokens = list(meta["tokenizer.ggml.tokens"])
        types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        pad = meta.get("tokenizer.ggml.padding_token_id")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
        vocab = {t: i for i, t in enumerate(tokens)}
        if kind == "gpt2":
            merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
            tok = _HFTokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
            tok.pre_tokenizer = _byte_level_pre(meta.get("tokenizer.ggml.pre"))
            tok.decoder = decoders.ByteLevel()
        elif kind == "llama":
            scores = list(meta.get("tokenizer.ggml.scores", [0.0] * len(tokens)))
            if str(meta.get("general.architecture", "")).startswith("gemma"):
                # As transformers reads Gemma files: a run of spaces is a vocabulary piece spelled with "▁" (not
                # an added token matched greedily), and merges follow the file's token order, not the scores.
                blank = [" " in t and not t.strip() for t in tokens]
                tokens = ["▁" * len(t) if b else t for t, b in zip(tokens, blank)]
                types = [1 if b else ty for ty, b in zip(types, blank)]
                vocab = {t: i for i, t in enumerate(tokens)}
                scores = [-float(i) for i in range(len(tokens))]
            merges = _merges_from_scores(tokens, scores)
            unk_tok = tokens[unk] if unk is not None else None
            tok = _HFTokenizer(models.BPE(vocab, merges, unk_token=unk_tok, fuse_unk=True, byte_fallback=True))
            prefix = "first" if meta.get("tokenizer.ggml.add_space_prefix", True) else "never"
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prefix, split=False)
            tok.decoder = decoders.Sequence(
                [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                + ([decoders.Strip(" ", 1, 0)] if prefix == "first" else [])
            )
        else:
            raise ValueError(
                f"GGUF tokenizer model '{kind}' is not supported; supported: 'gpt2' (byte-level BPE), "
                "'llama' (SentencePiece)"
            )
        specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == _CONTROL]
        user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
        if specials:
            tok.add_special_tokens(specials)
        if user:
            tok.add_tokens(user)
        if add_bos and bos is not None:
            b = tokens[bos]
            tok.post_processor = processors.TemplateProcessing(
                single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, bos)]
            )
        template = meta.get("tokenizer.chat_template")
        return cls(tok, bos_id=bos, eos_id=eos, pad_id=pad, add_bos=add_bos,
                   chat_template=template if isinstance(template, str) else None)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    # ------------------------------------------------------------------ encode / decode
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, prepend_bos: bool | None = None) -> list[int]:
        """Ids for one string. ``prepend_bos`` None follows the checkpoint's rule; True/False forces it."""
        if prepend_bos is None:
            return self.hf.encode(text).ids
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if prepend_bos:
            if self.bos_id is None:
                raise ValueError("prepend_bos=True but this tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        return ids

    def to_tokens(self, text, *, prepend_bos=None, padding_side="right", return_mask=False):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("to_tokens needs at least one string")
        seqs = [self.encode(t, prepend_bos=prepend_bos) for t in texts]
        T = max(len(s) for s in seqs)
        if T == 0:
            raise ValueError("the text encodes to no tokens")
        ids = np.full((len(seqs), T), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(seqs), T), dtype=np.int32)
        for i, s in enumerate(seqs):
            sl = slice(T - len(s), T) if padding_side == "left" else slice(0, len(s))
            ids[i, sl] = s
            mask[i, sl] = 1
        # jax.device_put: jnp.asarray of a NumPy array would compile a small program for every new shape
        return (jax.device_put(ids), jax.device_put(mask)) if return_mask else jax.device_put(ids)

    def to_string(self, ids):
        arr = np.asarray(ids)
        if arr.ndim == 2:
            return [self.hf.decode(row.tolist(), skip_special_tokens=False) for row in arr]
        return self.hf.decode(arr.reshape(-1).tolist(), skip_special_tokens=False)

    def to_str_tokens(self, text_or_ids, *, prepend_bos=None, attention_mask=None) -> list[str] | list[list[str]]:
        """Each token as its text, as TransformerLens's ``to_str_tokens``.

        A string, ``[pos]`` ids or ``[1, pos]`` ids give one list; a list of strings or ``[batch, pos]`` ids give one
        list per row. Rows of ids keep their pad tokens (a pad id cannot be told from the same id used as a real
        token, e.g. EOS); pass ``attention_mask`` (``to_tokens(..., return_mask=True)``) to drop the positions it
        marks 0. ``prepend_bos`` applies to text only.
        """
        if isinstance(text_or_ids, str):
            if attention_mask is not None:
                raise ValueError("attention_mask applies to token ids, not to text (text has no padding)")
            return self._pieces(self.encode(text_or_ids, prepend_bos=prepend_bos))
        if isinstance(text_or_ids, (list, tuple)) and text_or_ids and isinstance(text_or_ids[0], str):
            if attention_mask is not None:
                raise ValueError("attention_mask applies to token ids, not to text (text has no padding)")
            return [self.to_str_tokens(t, prepend_bos=prepend_bos) for t in text_or_ids]
        ids = np.asarray(text_or_ids)
        if ids.ndim > 2 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"to_str_tokens takes text or integer ids [pos] or [batch, pos], got {ids.dtype} "
                             f"of shape {ids.shape}")
        keep = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        if keep.shape != ids.shape:
            raise ValueError(f"attention_mask shape {keep.shape} must equal the ids' shape {ids.shape}")
        if ids.ndim < 2 or ids.shape[0] == 1:
            return self._pieces(ids.reshape(-1)[keep.reshape(-1)].tolist())
        return [self._pieces(row[k].tolist()) for row, k in zip(ids, keep)]

    def _pieces(self, ids: list[int]) -> list[str]:
        return [self.hf.decode([i], skip_special_tokens=False) for i in ids]

    def apply_chat_template(self, messages: Sequence[Mapping], *, add_generation_prompt: bool = True) -> str:
        """The text of a conversation (``[{"role": ..., "content": ...}, ...]``) in the checkpoint's own chat
        template (Jinja, rendered in a sandbox as ``transformers`` does). The text begins with any BOS the template
        writes, so encode it with ``prepend_bos=False``."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (the checkpoint's tokenizer_config.json or GGUF "
                             "metadata names none); use an instruct model, or write the prompt text yourself")
        for m in messages:
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"),
                                                                                                  str):
                raise ValueError(f"each message must be a mapping with string 'role' and 'content', got {m!r}")
        return _chat_environment().from_string(self.chat_template).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
            bos_token=self._special(self.bos_id), eos_token=self._special(self.eos_id))

    def _special(self, i: int | None) -> str:
        return self.hf.id_to_token(i) if i is not None else ""

    def to_single_token(self, text: str) -> int:
        ids = self.encode(text, prepend_bos=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {self.to_str_tokens(ids)}")
        return ids[0]


@functools.cache
def _chat_environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): fix it, or remove it to use the tokenizer's "
                         "defaults") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}: fix it, or remove it to use the "
                         "tokenizer's defaults")
    return value


def _check_gguf_vocab(meta: Mapping) -> None:
    """The ``tokenizer.ggml.*`` fields of a GGUF file, checked before they index one another."""
    where = meta.get("__file__", "the GGUF metadata")

    def bad(key, problem):
        return ValueError(f"{where}: field '{key}' {problem}; the file is corrupt or was not written for this loader")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise bad("tokenizer.ggml.tokens", "is missing, and the tokenizer needs it")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise bad("tokenizer.ggml.tokens", "must be a non-empty list of strings")
    n = len(tokens)
    longest = max(tokens, key=len)
    if meta.get("tokenizer.ggml.model") == "llama" and len(longest) > _MAX_PIECE:  # merges cost its length squared
        raise bad("tokenizer.ggml.tokens", f"holds a piece of {len(longest)} characters (at most {_MAX_PIECE})")
    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for key, ok in (("token_type", is_int), ("scores", is_number)):
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is not None and (not isinstance(v, list) or len(v) != n or not all(map(ok, v))):
            size = f"{len(v)} entries" if isinstance(v, list) else repr(v)[:40]
            raise bad(f"tokenizer.ggml.{key}", f"has {size}, but 'tokenizer.ggml.tokens' has {n} (one number each)")
    for key in ("bos", "eos", "unknown", "padding"):
        v = meta.get(f"tokenizer.ggml.{key}_token_id")
        if v is not None and not (is_int(v) and 0 <= v < n):
            raise bad(f"tokenizer.ggml.{key}_token_id", f"is {v!r}, but the vocabulary has {n} tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if merges is not None and (not isinstance(merges, list)
                               or not all(isinstance(m, str) and " " in m for m in merges)):
        raise bad("tokenizer.ggml.merges", "must be a list of strings 'left right'")
    for key in ("model", "pre"):
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is not None and not isinstance(v, str):
            raise bad(f"tokenizer.ggml.{key}", f"must be a string, got {v!r}")


def _merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece-BPE: every split of a piece into two pieces of the
    vocabulary, ordered by the merged piece's score (higher merges first), then by longer left and right
    parts, then by the parts' ids (the order transformers gives them)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, score in zip(tokens, scores):
        if len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((-score, -len(left), -len(right), vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]
