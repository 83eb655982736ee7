"""A chat backend on any instruct model ``interp`` loads: replies through ``model.generate`` (greedy, batched), and
answer probabilities read from one forward pass, so scorers need not sample text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interp.explain.backends import Reply
from interp.explain.cache import ResponseCache, default_cache


def _round_up(n: int, step: int = 32) -> int:
    return -(-n // step) * step


class LocalModel:
    """The chat :class:`~interp.explain.backends.Backend` on ``model`` (loaded with ``interp.load``; its tokenizer
    must carry a chat template, as SmolLM2-135M-Instruct's does). ``label`` names it (default: the model's
    config name); the cache key also holds a hash of its weights, so a fine-tuned model never reads another's
    replies (pass ``label``: a loaded model does not know the name it was loaded by). Up to ``batch_size``
    conversations run together (a smaller call runs in the next power of two), left-padded to multiples of 32
    tokens, so a few compiled programs serve every call.

    Beyond ``chat``: :meth:`choice_probs` (the probability of each answer, e.g. Yes/No) and
    :meth:`expected_numbers` (the expected 0-9 number the model would write after each listed token)."""

    def __init__(self, model, *, label: str | None = None, batch_size: int = 8,
                 cache: ResponseCache | str | None | bool = True):
        tok = getattr(model, "tokenizer", None)
        if tok is None or not getattr(tok, "chat_template", None):
            raise ValueError("LocalModel needs an instruct model whose tokenizer has a chat template (the "
                             "checkpoint's tokenizer_config.json or GGUF metadata); smollm2-135m has one")
        from interp.weights import weights_hash

        self.model, self.batch_size = model, int(batch_size)
        label = label or getattr(model.config, "name", None) or type(model.config).__name__.removesuffix("Config")
        self.name = f"local:{label}#{weights_hash(model)[:12]}"
        self.cache = default_cache() if cache is True else (ResponseCache(cache) if isinstance(cache, str) else
                                                            (cache or None))
        stops = [tok.eos_id] if tok.eos_id is not None else []
        for t in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
            i = tok.hf.token_to_id(t)
            if i is not None and i not in stops:
                stops.append(i)
        self.stop_tokens = stops

    def __repr__(self) -> str:
        return f"LocalModel({self.name})"

    # ------------------------------------------------------------------ helpers
    def _ids(self, conversation, assistant: str = "") -> list[int]:
        text = self.model.tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
        return self.model.tokenizer.encode(text + assistant, prepend_bos=False)

    def _batch(self, seqs: Sequence[Sequence[int]], extra: int = 0):
        T = _round_up(max(len(s) for s in seqs) + extra)
        B = min(self.batch_size, 1 << (len(seqs) - 1).bit_length())  # a power of two: few shapes, little padding
        pad = self.model.tokenizer.pad_id
        ids = np.full((B, T), pad, np.int32)
        mask = np.zeros((B, T), np.int32)
        for i, s in enumerate(seqs):
            ids[i, T - len(s):] = s
            mask[i, T - len(s):] = 1
        for i in range(len(seqs), B):  # unused rows repeat the first
            ids[i], mask[i] = ids[0], mask[0]
        return ids, mask

    def _next_logits(self, seqs: Sequence[Sequence[int]]):
        """Next-token logits ``[n, vocab]`` (float32) after each id sequence. When the sequences share a prefix of
        at least 32 tokens (a scorer's prompts differ only in the text asked about), the prefix runs once and its
        keys and values serve every sequence; each sequence's own tokens then run on top."""
        import jax.numpy as jnp

        n = len(seqs)
        shared = 0
        for column in zip(*seqs):
            if any(t != column[0] for t in column):
                break
            shared += 1
        shared = min(shared, min(len(s) for s in seqs) - 1)
        if shared < 32:
            ids, mask = self._batch(seqs)
            return self.model(ids, attention_mask=mask)[:n, -1].astype(jnp.float32)
        from interp.models.prefix import shared_prefix_logits

        logits = shared_prefix_logits(self.model, seqs[0][:shared], [s[shared:] for s in seqs],
                                      batch=self.batch_size)
        return jnp.asarray(logits)

    def _cached(self, kind: str, conversations, params: dict, compute):
        keys = [ResponseCache.key(self.name, c, kind=kind, **params) for c in conversations]
        got = [self.cache.get(k) if self.cache else None for k in keys]
        todo = [i for i, g in enumerate(got) if g is None]
        for lo in range(0, len(todo), self.batch_size):
            part = todo[lo:lo + self.batch_size]
            for i, value in zip(part, compute([conversations[i] for i in part])):
                got[i] = value
                if self.cache and value is not None:
                    self.cache.put(keys[i], value)
        return got, [i not in todo for i in range(len(conversations))]

    # ------------------------------------------------------------------ Backend
    def chat(self, conversations: Sequence[list[dict]], *, max_tokens: int = 256,
             temperature: float = 0.0) -> list[Reply]:
        """Greedy replies (``temperature`` 0 only: scores must be reproducible) of at most ``max_tokens`` tokens."""
        if temperature != 0.0:
            raise ValueError("LocalModel replies greedily (temperature 0) so that reruns match the cache")

        def compute(convs):
            seqs = [self._ids(c) for c in convs]
            ids, mask = self._batch(seqs)
            room = (self.model.n_ctx or 10**9) - ids.shape[1]
            if room < 1:
                return [None] * len(convs)
            g = self.model.generate(ids, min(max_tokens, room), attention_mask=mask, stop_tokens=self.stop_tokens)
            return list(g.texts[:len(convs)])

        texts, cached = self._cached("chat", conversations, {"max_tokens": max_tokens}, compute)
        return [Reply(t, None, c) if t is not None else Reply(None, "the prompt does not fit the model's context")
                for t, c in zip(texts, cached)]

    def choice_probs(self, conversations: Sequence[list[dict]], choices: Sequence[str]) -> list[list[float] | None]:
        """For each conversation, the probability of each of ``choices`` as the reply's first token, normalised over
        the choices (their first tokens must differ)."""
        import jax

        firsts = [self.model.tokenizer.encode(c, prepend_bos=False)[0] for c in choices]
        if len(set(firsts)) < len(firsts):
            raise ValueError(f"the choices {list(choices)} begin with the same token; give choices that differ at once")

        def compute(convs):
            logits = np.asarray(jax.nn.log_softmax(self._next_logits([self._ids(c) for c in convs]), axis=-1))
            lp = logits[:, firsts]
            p = np.exp(lp - lp.max(axis=1, keepdims=True))
            return [",".join(f"{v:.6g}" for v in row / row.sum()) for row in p]

        got, _ = self._cached("choices", conversations, {"choices": list(choices)}, compute)
        return [[float(v) for v in g.split(",")] if g is not None else None for g in got]

    def expected_numbers(self, conversations: Sequence[list[dict]], lines: Sequence[Sequence[str]]) -> list:
        """For each conversation, a reply is written for it: every item of its ``lines`` followed by a tab and the
        word "unknown" (Bills et al. 2023's all-at-once simulation). Returns, per conversation, the expected value of
        the digit 0-9 the model would write in place of each "unknown" (the digits' probabilities renormalised)."""
        import jax

        tok = self.model.tokenizer
        digits = [tok.encode(str(d), prepend_bos=False)[0] for d in range(10)]
        tab, unknown, nl = (tok.encode(s, prepend_bos=False) for s in ("\t", "unknown", "\n"))

        def build(conv, items):
            ids, at = self._ids(conv), []
            for item in items:
                ids += tok.encode(item.replace("\n", "\\n"), prepend_bos=False) + tab
                at.append(len(ids) - 1)  # the logits here predict the number
                ids += unknown + nl
            return ids, at

        def compute(pairs):
            built = [build(c, items) for c, items in pairs]
            ids, mask = self._batch([b[0] for b in built])
            logits = self.model(ids, attention_mask=mask)
            out = []
            for r, (seq, at) in enumerate(built):
                off = ids.shape[1] - len(seq)
                lp = np.asarray(jax.nn.log_softmax(logits[r, np.array(at) + off].astype("float32")))[:, digits]
                p = np.exp(lp - lp.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                out.append(",".join(f"{v:.5g}" for v in p @ np.arange(10)))
            return out

        pairs = list(zip(conversations, [list(x) for x in lines]))
        keyed = [c + [{"role": "assistant", "content": "\n".join(items)}] for c, items in pairs]
        by_key = {id(k): pair for k, pair in zip(keyed, pairs)}
        got, _ = self._cached("numbers", keyed, {}, lambda convs: compute([by_key[id(c)] for c in convs]))
        return [np.array([float(v) for v in g.split(",")]) if g is not None else None for g in got]
