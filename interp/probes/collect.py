"""Activations of labelled texts at any hook points, reduced to one row per text (or per token).

One model pass per batch feeds every requested hook and stops after the deepest one (``run_with_cache`` with
``return_logits=False``). Texts are tokenized one by one, sorted by length, padded at the right within a batch and
run with their attention mask, so a text's activations do not depend on its batch mates. Reductions:

* ``"last"``: the last real token of each text;
* ``"mean"``: the mean over each text's real tokens (padding excluded);
* ``"marker"``: the last occurrence of ``marker`` (a string, matched as its token sequence, read at its last
  token; or a token id) in each text;
* ``"all"``: every real token, one row each (``Activations.index`` holds (text, position) per row); labels may
  then be per text (repeated over its tokens) or per token (one sequence per text).

Axis letters: N rows (texts, or tokens with ``"all"``), D features of a hook point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from interp.hooks import act_name, suggest
from interp.probes._hash import model_hash
from interp.probes.fit import check_activations
from interp.results import Result, Summary

__all__ = ["REDUCTIONS", "Activations", "collect"]

REDUCTIONS = ("last", "mean", "marker", "all")


@dataclasses.dataclass(frozen=True, eq=False)
class Activations(Result):
    """Reduced activations: ``acts[hook]`` is ``[N, D]`` float32 (numpy), one row per text (per token with
    ``reduce="all"``, located by ``index [N, 2]`` = (text, position)). ``labels [N]`` or None; ``model_hash``: the
    weights hash of the model that produced them; ``groups [N]`` or None: the group id of each row (rows of one
    group, such as a statement and its false twin, are near-duplicates that cross-validation keeps together)."""

    acts: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    reduce: str
    model_hash: str | None = None
    texts: tuple[str, ...] = ()
    index: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self):
        if not self.acts:
            raise ValueError("activations need at least one hook")
        n = {k: v.shape[0] for k, v in self.acts.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"every hook needs the same number of rows; got {n}")
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{len(self)} rows but {len(self.labels)} labels")
        if self.groups is not None:
            object.__setattr__(self, "groups", np.asarray(self.groups))
            if self.groups.ndim != 1 or len(self.groups) != len(self):
                raise ValueError(f"{len(self)} rows but groups of shape {self.groups.shape}: give one group id per row")

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(self.acts)

    def __len__(self) -> int:
        return int(next(iter(self.acts.values())).shape[0])

    def __getitem__(self, hook: str) -> np.ndarray:
        if hook not in self.acts:
            raise KeyError(f"no activations at '{hook}'{suggest(hook, self.acts)}; collected: "
                           f"{', '.join(self.hooks[:6])}{', ...' if len(self.hooks) > 6 else ''}")
        return self.acts[hook]

    def stack(self, hooks: Sequence[str] | None = None) -> np.ndarray:
        """``[L, N, D]`` for ``hooks`` (default: all), which must share a width."""
        hooks = list(self.hooks if hooks is None else hooks)
        widths = {h: self[h].shape[1] for h in hooks}
        if len(set(widths.values())) != 1:
            raise ValueError(f"hooks of different widths cannot be stacked: {widths}; pass hooks= of one width")
        return np.stack([self[h] for h in hooks])

    def subset(self, rows) -> Activations:
        """The rows ``rows`` (indices or a boolean mask) as new activations."""
        rows = np.arange(len(self))[rows]
        texts = self.texts
        if self.index is None and texts:
            texts = tuple(texts[int(r)] for r in rows)
        return dataclasses.replace(self, acts={k: v[rows] for k, v in self.acts.items()},
                                   labels=None if self.labels is None else self.labels[rows], texts=texts,
                                   index=None if self.index is None else self.index[rows],
                                   groups=None if self.groups is None else self.groups[rows])

    def with_labels(self, labels) -> Activations:
        return dataclasses.replace(self, labels=np.asarray(labels))

    def _summary(self) -> Summary:
        first = self.acts[self.hooks[0]]
        facts = {"reduction": self.reduce, "model hash": (self.model_hash or "unknown")[:12]}
        if self.labels is not None:
            facts["class 1"] = f"{int(np.sum(self.labels))} of {len(self)}"
        if self.groups is not None:
            facts["groups"] = len(set(self.groups.tolist()))
        top = [(h, f"[{self.acts[h].shape[0]}, {self.acts[h].shape[1]}]") for h in self.hooks]
        return Summary("activations", {"hook": len(self.hooks), "row": len(self), "feature": first.shape[1]}, facts,
                       top, "hooks")


def _hook_list(model, hooks, splices) -> list[str]:
    if isinstance(hooks, (str, tuple)):
        hooks = [hooks]
    hooks = list(hooks)
    if not hooks:
        raise ValueError("no hooks given: name at least one hook point, e.g. 'blocks.5.hook_resid_post' or "
                         "'resid_post' for every layer")
    vocab = list(model.hook_names) + [name for s in splices for _, name in s.names()]
    out = []
    for h in hooks:
        if isinstance(h, str) and "." not in h and not h.startswith("hook_"):
            try:  # a bare short name: every layer
                out += [act_name(h, layer) for layer in range(model.n_layers)]
                continue
            except KeyError:
                pass
        name = act_name(*h) if isinstance(h, tuple) else h
        if name not in vocab:
            hint = ("; a dictionary's latents exist once it is spliced in: pass splices=[Splice(...)]"
                    if ".sae." in name and not splices else "")
            raise ValueError(f"this model has no hook '{name}'{suggest(name, vocab)}{hint}")
        out.append(name)
    return list(dict.fromkeys(out))


def _marker_ids(model, marker) -> list[int]:
    if isinstance(marker, (int, np.integer)) and not isinstance(marker, bool):
        return [int(marker)]
    if isinstance(marker, str) and marker and model.tokenizer is not None:
        ids = model.tokenizer.encode(marker, prepend_bos=False)
        if ids:
            return list(ids)
    raise ValueError(f"reduce='marker' needs marker= a non-empty string or a token id, got {marker!r}")


def _encode(model, texts, prepend_bos) -> list[list[int]]:
    """Token ids of each text (strings through the model's tokenizer; sequences of ids as they are)."""
    if all(isinstance(t, str) for t in texts):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids (one sequence per text) instead of strings")
        return [model.tokenizer.encode(t, prepend_bos=prepend_bos) for t in texts]
    try:
        seqs = [[int(i) for i in np.asarray(t).reshape(-1)] for t in texts]
    except (TypeError, ValueError):
        raise TypeError("texts must all be strings, or all sequences of token ids") from None
    bad = [i for i in (x for s in seqs for x in s) if not 0 <= i < model.d_vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside this model's vocabulary (0..{model.d_vocab - 1})")
    return seqs


def _last_occurrence(seq: list[int], pattern: list[int]) -> int:
    k = len(pattern)
    for end in range(len(seq), k - 1, -1):
        if seq[end - k:end] == pattern:
            return end - 1
    return -1


def collect(model, texts: Sequence[str], hooks, labels=None, *, reduce: str = "last", marker: str | int | None = None,
            batch_size: int = 32, splices: Sequence = (), prepend_bos: bool | None = None, groups=None) -> Activations:
    """Activations of ``texts`` at ``hooks``, reduced per text (see the module docstring), with their ``labels``.

    ``texts``: strings, or sequences of token ids (one per text).
    ``hooks``: hook names, short keys such as ``("resid_post", 5)``, or bare short names meaning every layer
    (``"resid_post"``); with ``splices`` a dictionary's latents too (``"blocks.5.hook_resid_post.sae.hook_latents"``).
    Every hook comes from the same model pass. Returns :class:`Activations` (float32 numpy rows).
    ``groups``: one group id per text (e.g. ``datasets.true_false().groups``), kept as ``Activations.groups``
    (repeated over a text's tokens with ``reduce="all"``), which :func:`sweep` and :func:`weak_to_strong` then use.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}{suggest(str(reduce), REDUCTIONS)}; choose one of "
                         f"{', '.join(REDUCTIONS)}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it as [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given: collect needs at least one text")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if labels is not None and reduce != "all" and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: pass exactly one label per text")
    if groups is not None:
        if isinstance(groups, str) or np.ndim(groups) != 1 or len(groups) != len(texts):
            got = "one string" if isinstance(groups, str) else f"groups of shape {np.shape(groups)}"
            raise ValueError(f"{len(texts)} texts but {got}: pass exactly one group id per text")
        groups = np.asarray(groups)
    names = _hook_list(model, hooks, list(splices))
    seqs = _encode(model, texts, prepend_bos)
    empty = [i for i, s in enumerate(seqs) if not s]
    if empty:
        raise ValueError(f"text {empty[0]} ({texts[empty[0]]!r}) encodes to no tokens; drop the empty texts")
    where = None
    if reduce == "marker":
        pattern = _marker_ids(model, marker)
        where = [_last_occurrence(s, pattern) for s in seqs]
        missing = [i for i, w in enumerate(where) if w < 0]
        if missing:
            i = missing[0]
            raise ValueError(f"{len(missing)} texts lack the marker {marker!r} (tokens {pattern}); the first is text "
                             f"{i}: {texts[i]!r}. Put the marker in every text or choose another reduction")
    elif marker is not None:
        raise ValueError(f"marker= is used by reduce='marker' only (reduce is {reduce!r})")

    pad = model.tokenizer.pad_id if model.tokenizer is not None else 0  # hidden by the mask in any case
    order = np.argsort([len(s) for s in seqs], kind="stable")
    rows: dict[str, list] = {n: [None] * len(texts) for n in names}
    for start in range(0, len(texts), batch_size):
        batch = order[start:start + batch_size]
        T = max(len(seqs[i]) for i in batch)
        ids = np.full((len(batch), T), pad, np.int32)
        mask = np.zeros((len(batch), T), np.int32)
        for r, i in enumerate(batch):
            ids[r, :len(seqs[i])] = seqs[i]
            mask[r, :len(seqs[i])] = 1
        _, cache = model.run_with_cache(ids, names, attention_mask=mask, splices=list(splices), return_logits=False)
        for n in names:
            a = np.asarray(cache[n], np.float32)
            if a.ndim != 3:
                raise ValueError(f"hook '{n}' has shape {a.shape}; probes read [batch, pos, features] hook points "
                                 "(resid, attn_out, mlp_out, mlp.hook_post, dictionary latents, ...)")
            for r, i in enumerate(batch):
                L = len(seqs[i])
                if reduce == "last":
                    rows[n][i] = a[r, L - 1]
                elif reduce == "mean":
                    rows[n][i] = a[r, :L].mean(0)
                elif reduce == "marker":
                    rows[n][i] = a[r, where[i]]
                else:
                    rows[n][i] = a[r, :L]
    index = None
    if reduce == "all":
        acts = {n: np.concatenate(rows[n]) for n in names}
        index = np.concatenate([np.stack([np.full(len(s), i), np.arange(len(s))], 1) for i, s in enumerate(seqs)])
        labels = _token_labels(labels, seqs)
        if groups is not None:
            groups = np.repeat(groups, [len(s) for s in seqs])
    else:
        acts = {n: np.stack(rows[n]) for n in names}
    for n in names:
        check_activations(acts[n], f"activations at '{n}'")
    return Activations(acts, None if labels is None else np.asarray(labels), reduce, model_hash(model),
                       tuple(t for t in texts if isinstance(t, str)),
                       index, groups)


def _token_labels(labels, seqs) -> np.ndarray | None:
    if labels is None:
        return None
    if len(labels) != len(seqs):
        raise ValueError(f"{len(seqs)} texts but {len(labels)} labels: give one label per text, or one sequence of "
                         "labels per text (one per token)")
    out = []
    for i, (lab, s) in enumerate(zip(labels, seqs)):
        if np.ndim(lab) == 0:
            out.append(np.full(len(s), lab))
        elif len(lab) == len(s):
            out.append(np.asarray(lab))
        else:
            raise ValueError(f"text {i} has {len(s)} tokens but {len(lab)} token labels; give one label per token "
                             "(model.to_str_tokens(text) lists them)")
    return np.concatenate(out)

