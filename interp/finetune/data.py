"""Training examples: token ids with the positions the loss reads, built from chat turns or plain text, and the
padded batches a run feeds its one compiled step.

Axes: N examples, B batch, T positions (padded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One training sequence: ``tokens`` int32 ``[T]`` and ``targets`` bool ``[T]``. ``targets[t]`` True puts
    ``-log p(tokens[t] | tokens[:t])`` in the loss; ``targets[0]`` is always False (nothing predicts the first
    token)."""

    tokens: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        tokens, targets = np.asarray(self.tokens), np.asarray(self.targets)
        if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"Example tokens must be a non-empty 1-D array of integer ids, got {tokens.dtype} of "
                             f"shape {tokens.shape}")
        if targets.shape != tokens.shape or targets.dtype != np.bool_:
            raise ValueError(f"Example targets must be a bool array of the tokens' shape {tokens.shape}, got "
                             f"{targets.dtype} of shape {targets.shape}")
        if targets[0]:
            raise ValueError("Example targets[0] must be False: no position predicts the first token")
        object.__setattr__(self, "tokens", tokens.astype(np.int32))
        object.__setattr__(self, "targets", targets)

    @property
    def n_targets(self) -> int:
        return int(self.targets.sum())

    def __repr__(self) -> str:
        return f"Example({self.tokens.size} tokens, {self.n_targets} targets)"


def text_example(tokenizer, text: str) -> Example:
    """``text`` tokenized with the checkpoint's BOS rule; every token but the first is a target."""
    ids = np.asarray(tokenizer.encode(text), np.int32)
    if ids.size < 2:
        raise ValueError(f"{text!r} is {ids.size} token(s); a text example needs at least two (one to predict)")
    return Example(ids, np.arange(ids.size) > 0)


def chat_example(tokenizer, user: str, reply: str, *, system: str | None = None) -> Example:
    """A conversation rendered with the tokenizer's chat template: ``system`` (optional) and ``user`` turns, then
    the assistant's ``reply``. Targets are the reply's tokens and the end-of-turn token(s) after it (up to and
    including the first special token); what the template writes after that is left out.

    The prompt (with the generation prompt) and the reply are tokenized separately, as generation sees them: the
    model reads the prompt's ids and must produce the reply's."""
    if not reply:
        raise ValueError("reply is empty: a chat example needs a reply to train on")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}],
                                         add_generation_prompt=False)
    rest = full[len(prompt):]
    written = reply if reply in rest else reply.strip()  # templates may trim the message
    if not full.startswith(prompt) or not written or written not in rest:
        raise ValueError("the chat template does not write the reply after the generation prompt, so the reply "
                         "cannot be told from the prompt; build Examples with explicit targets instead")
    end = rest.index(written) + len(written)
    head = tokenizer.encode(rest[:end], prepend_bos=False)
    tail = tokenizer.encode(rest[end:], prepend_bos=False) if rest[end:] else []
    specials = _special_ids(tokenizer)
    cut = next((i + 1 for i, t in enumerate(tail) if t in specials), len(tail))
    prompt_ids = tokenizer.encode(prompt, prepend_bos=False)
    if not prompt_ids:
        raise ValueError("the chat template renders an empty prompt; a chat example needs a prompt to condition on")
    answer = head + tail[:cut]
    tokens = np.asarray(prompt_ids + answer, np.int32)
    return Example(tokens, np.arange(tokens.size) >= len(prompt_ids))


def _special_ids(tokenizer) -> set[int]:
    ids = {i for i in (tokenizer.eos_id,) if i is not None}
    decoder = tokenizer.hf.get_added_tokens_decoder()
    return ids | {int(i) for i, tok in decoder.items() if tok.special}


def as_examples(items, what: str = "data") -> list[Example]:
    """``items`` as a list of examples: :class:`Example` as they are, token id sequences as text examples (every
    token but the first a target)."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
            continue
        ids = np.asarray(item)
        if ids.ndim != 1 or ids.size < 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{what}[{i}] must be an Example or a 1-D sequence of at least two token ids, got "
                             f"{type(item).__name__} of shape {ids.shape}")
        out.append(Example(ids, np.arange(ids.size) > 0))
    return out


def check_examples(examples: Sequence[Example], vocab: int, n_ctx: int | None, what: str = "data") -> None:
    """Refuse what the model cannot train on: no examples, an example without targets, ids outside the vocabulary,
    sequences longer than the context."""
    if not examples:
        raise ValueError(f"{what} is empty: pass at least one Example (finetune.chat_example / text_example)")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise TypeError(f"{what}[{i}] is a {type(ex).__name__}, not a finetune.Example")
        if ex.n_targets == 0:
            raise ValueError(f"{what}[{i}] has no target positions (targets all False), so it adds nothing to the "
                             "loss; mark the tokens to learn or drop the example")
        bad = ex.tokens[(ex.tokens < 0) | (ex.tokens >= vocab)]
        if bad.size:
            raise ValueError(f"{what}[{i}] holds token id {int(bad[0])}, outside this model's vocabulary of {vocab} "
                             f"(valid ids are 0..{vocab - 1}); were the ids made by another tokenizer?")
        if n_ctx is not None and ex.tokens.size > n_ctx:
            raise ValueError(f"{what}[{i}] has {ex.tokens.size} tokens, more than the model's context of {n_ctx}; "
                             "shorten it")


def padded_length(examples: Sequence[Example], n_ctx: int | None) -> int:
    """The one length every batch of ``examples`` is padded to: the longest rounded up to a multiple of 16 (within
    the context), so a run compiles its step once."""
    longest = max(ex.tokens.size for ex in examples)
    T = -(-longest // 16) * 16
    return longest if n_ctx is not None and T > n_ctx else T


def slot_count(examples: Sequence[Example], T: int) -> int:
    """How many predicting positions a row of a batch of ``examples`` padded to ``T`` keeps: the most target tokens
    of any example (after its first token), rounded up to a multiple of 16, at most ``T - 1``. The loss reads the
    logits of these positions only, so prompt tokens cost no vocabulary-wide products."""
    most = max(int(ex.targets[1:].sum()) for ex in examples)
    return min(-(-most // 16) * 16, T - 1)


def target_positions(targets: np.ndarray, R: int) -> np.ndarray:
    """``[B R]`` int32: in each row, the positions ``t`` whose next token ``t + 1`` is a target, in order, then -1."""
    out = np.full((targets.shape[0], R), -1, np.int32)
    for i, row in enumerate(np.asarray(targets, bool)):
        t = np.flatnonzero(row[1:])
        if t.size > R:
            raise ValueError(f"row {i} has {t.size} target positions, more than the {R} slots of the batch")
        out[i, :t.size] = t
    return out


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The examples of batch ``step``: the data in a fresh random order each epoch, read ``batch_size`` at a time
    across epoch boundaries. A function of its arguments alone, so a resumed run draws the batches an uninterrupted
    one would."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = pos // n
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n)
        out[epochs == epoch] = order[pos[epochs == epoch] % n]
    return out


def make_batch(examples: Sequence[Example], T: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tokens [B T] int32, attention_mask [B T] int32, targets [B T] bool)``, right-padded to ``T``."""
    B = len(examples)
    tokens = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), np.int32)
    targets = np.zeros((B, T), bool)
    for i, ex in enumerate(examples):
        n = ex.tokens.size
        tokens[i, :n], mask[i, :n], targets[i, :n] = ex.tokens, 1, ex.targets
    return tokens, mask, targets
