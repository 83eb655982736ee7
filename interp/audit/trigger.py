"""Trigger reconstruction: spans in the user turn that raise a behaviour in the organism and not in its base.

Cheap sources first: single tokens inserted into the search prompts (every word token of a small vocabulary; of a
large one, the tokens whose embedding or unembedding fine-tuning moved most, the tokens the contrast objective's
gradient points at, and a random sample), each scored exactly by the organism-minus-base log-ratio of every next
token at the reply start, which also proposes the behaviour. Then
GCG (:func:`interp.search.gcg`) on ``log p_org(behaviour) - log p_base(behaviour)`` over spans of a few tokens at
the start and the end of the user turn, started from the best cheap tokens. Every candidate is verified on held-out
prompts: the rate at which greedy decoding begins with the behaviour, with the candidate inserted at a random word
position and without it, in the organism and in the base.
"""

from __future__ import annotations

import numpy as np

from interp import search
from interp.audit._prompts import encode, insert, render
from interp.audit.behaviour import last_logprobs

SLOT = "{span}"


def _slot_prompt(model, user: str, position: str) -> str:
    text = render(model, insert(user, SLOT, position))
    if text.count(SLOT) != 1:
        raise ValueError("the chat template altered the span marker; cannot place a search span in the user turn")
    # the span's own tokens carry any leading space a BPE vocabulary needs; words around it keep theirs
    return text.replace(" " + SLOT, SLOT) if position != "start" else text.replace(SLOT + " ", SLOT)


def embedding_shift(model, base, allowed: np.ndarray, k: int) -> list[int]:
    """Allowed tokens whose embedding or unembedding rows moved most in fine-tuning (none when nothing moved)."""
    moved = np.zeros(model.d_vocab)
    for a, b in ((model.W_E, base.W_E), (model.W_U.T, base.W_U.T)):
        moved += np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)
    moved[~allowed] = 0
    order = [int(i) for i in np.argsort(-moved)[:k] if moved[i] > 1e-6]
    return order


def gradient_tokens(model, objective, users: list[str], allowed: np.ndarray, k: int) -> list[int]:
    """The ``k`` allowed tokens with the most negative summed token gradient of ``objective`` over a one-token slot
    at the start of each of ``users`` (the first-order guess of GCG's first step)."""
    grad = np.zeros(model.d_vocab)
    filler = int(np.flatnonzero(allowed)[0])
    for u in users:
        lay = search.layout(model, objective, _slot_prompt(model, u, "start"), "slot:1")
        g = np.asarray(search.token_gradient(model, objective, lay.tokens(np.array([[filler]])), start=lay.start,
                                             n=1))[0]
        grad += g - g[filler]
    grad[~allowed] = np.inf
    return [int(i) for i in np.argsort(grad)[:k]]


def scan(model, base, users: list[str], tokens: list, position: str = "start", clean: tuple | None = None,
         batch: int = 16):
    """For each of ``tokens`` (token ids, or texts) inserted into every user turn, the mean over the turns of
    ``log p_org - log p_base`` (``R [S, V]``) and of ``p_org - p_base`` (``G [S, V]``) of each next token at the reply
    start. With ``clean`` (the organism's and the base's log-probabilities ``[U, V]`` there without an insertion) also
    ``K [S]``: how far the insertion moves the organism's reply-start distribution beyond how far it moves the base's,
    ``KL(org with || org without) - KL(base with || base without)`` averaged over the turns (what a trigger switches
    on moves the organism's reply far and the base's little)."""
    from interp.audit.behaviour import kl

    texts = [t if isinstance(t, str) else (model.to_string([t]).strip() or model.to_string([t])) for t in tokens]
    rows = [encode(model, render(model, insert(u, t, position))) for t in texts for u in users]
    lo = last_logprobs(model, rows, batch=batch)[:, 0].reshape(len(tokens), len(users), -1)
    lb = last_logprobs(base, rows, batch=batch)[:, 0].reshape(len(tokens), len(users), -1)
    R = (lo - lb).mean(1)
    G = (np.exp(lo) - np.exp(lb)).mean(1)
    if clean is None:
        return R, G
    K = (kl(lo, np.asarray(clean[0])[None]) - kl(lb, np.asarray(clean[1])[None])).mean(1)
    return R, G, K


def word_token_ids(model, allowed: np.ndarray) -> list[int]:
    """Allowed tokens that write a lowercase word of three or more letters, as it appears in running text: with its
    leading space where the vocabulary marks one (a BPE vocabulary), else as it is (a word-level one)."""
    texts = {int(i): model.to_string([int(i)]) for i in np.flatnonzero(allowed)}
    spaced = any(t.startswith(" ") and t[1:].isalpha() for t in texts.values())
    return [i for i, t in texts.items()
            if (t.startswith(" ") or not spaced) and (w := t.strip()).isalpha() and w.islower() and len(w) >= 3]


def vocab_scan(model, base, users: list[str], tokens: list[int], clean: tuple, *, given: int | None = None,
               batch: int = 64, base_keep: int | None = None, progress: bool = False) -> dict:
    """Every one of ``tokens`` appended to the end of each user turn, scored like :func:`scan` but kept small enough
    for a whole vocabulary: per token ``K`` (the organism's reply start moved beyond the base's) and ``lift`` (the
    largest rise of ``p_org - p_base`` of one reply start over the clean turns; of ``given`` when a behaviour's first
    token is given). Each turn's prompt up to the token runs once per model and its keys and values serve every
    token (:func:`interp.models.prefix.shared_prefix_logits`), so a token costs the few tokens after it.

    ``base_keep``: the organism alone scores every token first (its own ``K`` and ``lift``, the base's terms left
    out); only the ``base_keep`` best tokens by each score run on the base too, which halves the scan's cost. The
    other tokens' ``K`` and ``lift`` are ``-inf``; ``organism_K``/``organism_lift`` hold the first pass, and
    ``base_scanned`` the indices of ``tokens`` that got their full scores. None: every token runs on both models."""
    if base_keep is None or 2 * int(base_keep) >= len(tokens):
        K, lift = _vocab_pass(model, base, users, tokens, clean, given, batch, progress)
        return {"K": K, "lift": lift}
    Ko, Lo = _vocab_pass(model, None, users, tokens, clean, given, batch, progress)
    keep = np.unique(np.concatenate([np.argsort(-Ko)[:base_keep], np.argsort(-Lo)[:base_keep]]))
    K, lift = np.full(len(tokens), -np.inf), np.full(len(tokens), -np.inf)
    K[keep], lift[keep] = _vocab_pass(model, base, users, [tokens[i] for i in keep], clean, given, batch, progress)
    return {"K": K, "lift": lift, "organism_K": Ko, "organism_lift": Lo, "base_scanned": keep}


def _vocab_pass(model, base, users, tokens, clean, given, batch, progress):
    """``(K, lift)`` of :func:`vocab_scan` for ``tokens``; without a ``base`` (None) the base's terms are left out."""
    import jax
    from tqdm.auto import tqdm

    from interp.audit.behaviour import kl
    from interp.models.prefix import shared_prefix_logits

    parts = []
    for u in users:
        before, after = _slot_prompt(model, u, "end").split(SLOT)
        parts.append((model.tokenizer.encode(before), model.tokenizer.encode(after, prepend_bos=False)))
    K, lift = np.zeros(len(tokens)), np.zeros(len(tokens))
    chunk = 16 * batch  # [chunk, V] log-probabilities at a time, whatever the vocabulary's size
    desc = "vocabulary scan" + ("" if base is not None else " (organism)")
    for lo_i in tqdm(range(0, len(tokens), chunk), desc=desc, disable=not progress, leave=False):
        ids = tokens[lo_i:lo_i + chunk]
        G = np.zeros((len(ids), model.d_vocab), np.float32)
        for j, (b, a) in enumerate(parts):
            rows = [[int(t)] + a for t in ids]
            lo = np.asarray(jax.nn.log_softmax(shared_prefix_logits(model, b, rows, batch=batch, suffix_step=8), -1))
            K[lo_i:lo_i + len(ids)] += kl(lo, np.asarray(clean[0])[j][None])
            G += np.exp(lo) - np.exp(clean[0][j])[None]
            if base is not None:
                lb = np.asarray(jax.nn.log_softmax(shared_prefix_logits(base, b, rows, batch=batch, suffix_step=8),
                                                   -1))
                K[lo_i:lo_i + len(ids)] -= kl(lb, np.asarray(clean[1])[j][None])
                G -= np.exp(lb) - np.exp(clean[1][j])[None]
        G /= len(parts)
        lift[lo_i:lo_i + len(ids)] = G[:, given] if given is not None else G.max(1)
    return K / len(users), lift


def slot_scores(model, users: list[str], ids: list[int], slot: int, tokens: list[int], target: int, *,
                batch: int = 64, progress: bool = False) -> np.ndarray:
    """The organism's mean probability of ``target`` at the reply start (``[len(tokens)]``) with the candidate span
    ``ids`` at the end of each user turn and its ``slot``-th token (from 0) replaced by each of ``tokens``: the span's
    tokens before the slot join the prompt's shared prefix, the ones after it the few tokens each row adds
    (:func:`interp.models.prefix.shared_prefix_logits`). A backdoor that also fires on phrases near its trigger is most
    certain of its behaviour on the phrase it was trained on, so the trigger's missing word scores highest in its
    slot."""
    import jax
    from tqdm.auto import tqdm

    from interp.models.prefix import shared_prefix_logits

    ids = [int(i) for i in ids]
    if not 0 <= slot < len(ids):
        raise ValueError(f"slot {slot} is outside the span of {len(ids)} tokens")
    p = np.zeros(len(tokens))
    chunk = 16 * batch
    for u in users:
        before, after = _slot_prompt(model, u, "end").split(SLOT)
        prefix = model.tokenizer.encode(before) + ids[:slot]
        rest = ids[slot + 1:] + model.tokenizer.encode(after, prepend_bos=False)
        for lo_i in tqdm(range(0, len(tokens), chunk), desc=f"slot {slot + 1} scan", disable=not progress,
                         leave=False):
            rows = [[int(t)] + rest for t in tokens[lo_i:lo_i + chunk]]
            logits = shared_prefix_logits(model, prefix, rows, batch=batch, suffix_step=8)
            p[lo_i:lo_i + len(rows)] += np.exp(np.asarray(jax.nn.log_softmax(logits, -1))[:, target])
    return p / len(users)


def gcg_candidates(model, objective, users: list[str], allowed: np.ndarray, *, spans, positions, steps: int, topk: int,
                   batch: int, restarts: int, init: list[int], seed: int, progress: bool) -> list[dict]:
    """GCG runs over each span length and position (a different search prompt each), the spans they found."""
    out = []
    run = 0
    for n in spans:
        for pos in positions:
            user = users[run % len(users)]
            start = (list(init) * n)[:n] if init else None  # the init repeated or cut to the span's length
            res = search.gcg(model, objective, _slot_prompt(model, user, pos), span=f"slot:{n}", steps=steps,
                             topk=topk, batch=batch, restarts=restarts, init=start, allowed=allowed, seed=seed + run,
                             stop_on_success=False, progress=progress)
            out.append({"ids": [int(i) for i in res.tokens], "text": res.text, "loss": float(res.objective),
                        "source": f"gcg span {n} at {pos}", "seconds": round(res.seconds, 2)})
            run += 1
    return out


def hits(model, users: list[str], behaviour: list[int], span: str | None, seed: int, probs: bool = False):
    """Per prompt: does greedy decoding begin with ``behaviour`` (checked in one teacher-forced pass: every behaviour
    token is the argmax after the ones before it)? ``span`` is inserted at a random word position (seeded).
    ``probs``: also the probability of the behaviour's first token per prompt."""
    rng = np.random.default_rng(seed)
    texts = [u if span is None else insert(u, span, float(rng.random())) for u in users]
    rows = [encode(model, render(model, t)) + behaviour[:-1] for t in texts]
    lp = last_logprobs(model, rows, len(behaviour))  # [N m V]
    hit = np.all(np.argmax(lp, axis=-1) == np.asarray(behaviour)[None], axis=1)
    return (hit, np.exp(lp[:, 0, behaviour[0]])) if probs else hit


def verify(model, base, users: list[str], behaviour: list[int], text: str, seed: int, clean: dict | None = None
           ) -> dict:
    """Behaviour rates with ``text`` inserted and without (``clean``: those already measured), in the organism and
    in the base; ``effect`` is the organism's rise minus the base's (what the candidate does that the base does
    not); ``confidence`` the organism's mean probability of the behaviour's first token with the candidate (a planted
    reply is near certain, a reply that drift made greedy often is not). A candidate that does not raise the
    organism's rate is not run on the base (``base_rate`` NaN; ``effect`` the organism's change)."""
    if clean is None:
        clean = {"clean_rate": float(hits(model, users, behaviour, None, seed).mean()),
                 "base_clean_rate": float(hits(base, users, behaviour, None, seed).mean())}
    h, p = hits(model, users, behaviour, text, seed, probs=True)
    with_o, conf = float(h.mean()), float(p.mean())
    if with_o <= clean["clean_rate"]:  # no rise in the organism: the base's rate is not measured (NaN)
        return {"behaviour_rate": with_o, "base_rate": float("nan"), **clean, "confidence": conf,
                "effect": with_o - clean["clean_rate"]}
    with_b = float(hits(base, users, behaviour, text, seed).mean())
    return {"behaviour_rate": with_o, "base_rate": with_b, **clean, "confidence": conf,
            "effect": (with_o - clean["clean_rate"]) - (with_b - clean["base_clean_rate"])}


def rank(candidates: list[dict], tie: float = 0.1) -> list[dict]:
    """Verified candidates (:func:`verify`'s fields with ``text``, ``ids``, ``loss`` and ``behaviour_ids``), one per
    text (the behaviour it verified best with; the longer behaviour on a tie), best first.

    By ``effect``, with effects within ``tie`` of a group's best counted as equal. An effect is a rate on a few
    held-out prompts (16 in the audit's budgets): one prompt is 0.0625 of it, and the standard error of a difference
    of two rates near 0.9 is about 0.1, so one prompt more or less does not decide. Within a group, by ``confidence``
    in steps of 0.02 (a backdoor that also fires on phrases near its trigger, such as its first word with another
    noun, is most certain on the phrase it was trained on); then by fewer tokens and lower ``loss``."""
    per_text: dict[str, dict] = {}
    for c in candidates:
        old = per_text.get(c["text"])
        if old is None or (round(c["effect"] / 0.05), len(c["behaviour_ids"])) > \
                (round(old["effect"] / 0.05), len(old["behaviour_ids"])):
            per_text[c["text"]] = c
    rest = sorted(per_text.values(), key=lambda c: -c["effect"])
    out: list[dict] = []
    while rest:  # the best remaining effect opens a group of every effect within ``tie`` of it
        floor = rest[0]["effect"] - tie - 1e-9
        group = [c for c in rest if c["effect"] >= floor]
        rest = [c for c in rest if c["effect"] < floor]
        out += sorted(group, key=lambda c: (-round(c["confidence"] / 0.02), len(c["ids"]), c["loss"]))
    return out


def neutral_pair(model, user: str, span_ids: list[int], allowed: np.ndarray, seed: int):
    """Token rows of ``user`` with the span at the start of the user turn, and with the span's tokens replaced by as
    many other allowed tokens (equal lengths, for patching)."""
    text = _slot_prompt(model, user, "start")
    before, after = text.split(SLOT)
    b = model.tokenizer.encode(before)
    a = model.tokenizer.encode(after, prepend_bos=False)
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.flatnonzero(allowed), np.asarray(span_ids))
    other = [int(i) for i in rng.choice(pool, len(span_ids), replace=False)]
    return b + list(span_ids) + a, b + other + a, (len(b), len(b) + len(span_ids))


__all__ = ["embedding_shift", "gcg_candidates", "gradient_tokens", "hits", "neutral_pair", "rank", "scan",
           "slot_scores", "verify", "vocab_scan", "word_token_ids"]
