"""Feature indexes and cards (the computation; :mod:`interp.viz` draws them): where a dictionary's latents fire
over a token set, and what they write.

:func:`feature_index` runs the model over a token set once and keeps every nonzero latent activation
(sparse: token, latent, value), so the card of any latent (:func:`feature_card`) is a lookup. A card holds the
top-activating contexts with per-token activations, the activation histogram, the density, and the tokens the
latent's decoder direction promotes and suppresses through the unembedding (its direct logit effect).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp.results import Result, Summary, token_strings, top_entries


@dataclasses.dataclass
class FeatureIndex(Result):
    """Every nonzero latent activation of ``dictionary`` over ``tokens [N, T]``, sorted by latent: entry ``i`` is
    latent ``latent[i]`` firing at ``value[i]`` on token ``flat_pos[i]`` of ``tokens.reshape(-1)``; the entries
    of latent ``f`` are ``starts[f]:starts[f + 1]``. The first ``skip_positions`` of each row are not indexed."""

    tokens: np.ndarray  # [N T]
    width: int
    flat_pos: np.ndarray  # [nnz] index into tokens.reshape(-1)
    latent: np.ndarray  # [nnz], sorted
    value: np.ndarray  # [nnz]
    starts: np.ndarray  # [width + 1]: entries of latent f are starts[f]:starts[f+1]
    skip_positions: int = 0

    @property
    def n_tokens(self) -> int:
        """Number of indexed tokens (positions past ``skip_positions``)."""
        return int(self.tokens.shape[0] * max(self.tokens.shape[1] - self.skip_positions, 0))

    def entries(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat token positions, activations) where latent ``f`` fires."""
        if not 0 <= f < self.width:
            raise IndexError(f"latent {f} is out of range: the dictionary has {self.width} latents")
        s = slice(self.starts[f], self.starts[f + 1])
        return self.flat_pos[s], self.value[s]

    def density(self) -> np.ndarray:
        """Fraction of tokens on which each latent fires."""
        return np.diff(self.starts) / max(self.n_tokens, 1)

    def activations(self, f: int) -> np.ndarray:
        """Dense ``[N, T]`` activations of latent ``f``."""
        out = np.zeros(self.tokens.size, np.float32)
        pos, val = self.entries(f)
        out[pos] = val
        return out.reshape(self.tokens.shape)

    def _summary(self) -> Summary:
        N, T = self.tokens.shape
        density = self.density()
        facts = {"indexed tokens": self.n_tokens, "activations": len(self.value),
                 "latents that fire": int((density > 0).sum()), "skipped positions": self.skip_positions}
        return Summary("feature index", {"row": N, "pos": T, "latent": self.width}, facts,
                       [(f"latent {f}", d) for f, d in top_entries(density, [range(self.width)], k=8,
                                                                     by_magnitude=False) if d > 0],
                       "densest latents (fraction of tokens)")


@jax.jit
def _encode(dictionary, x):
    return dictionary.encode(x)


@jax.jit
def _encode_sparse(dictionary, x):
    vals, idx = dictionary.encode_sparse(x.reshape(-1, x.shape[-1]))
    return vals.reshape(*x.shape[:-1], -1), idx.reshape(*x.shape[:-1], -1)


def _entries(dictionary, x, n: int, skip_positions: int):
    """``(row, position, latent, value)`` of the nonzero activations of ``dictionary`` on ``x [B T D]``'s first ``n``
    rows. A dictionary with ``encode_sparse`` (TopK) hands over only its ``k`` codes per token, not the dense
    ``[B T M]`` activations."""
    if hasattr(dictionary, "encode_sparse"):
        vals, idx = (np.asarray(a)[:n] for a in _encode_sparse(dictionary, x))
        vals = vals.copy()
        vals[:, :skip_positions] = 0.0
        b, t, j = np.nonzero(vals > 0)
        return b, t, idx[b, t, j], vals[b, t, j]
    z = np.array(_encode(dictionary, x))[:n]  # [n T M], writable
    z[:, :skip_positions] = 0.0
    b, t, f = np.nonzero(z > 0)
    return b, t, f, z[b, t, f]


def feature_index(model, dictionary, tokens, *, hook: str | None = None, batch: int = 8, skip_positions: int = 0,
                  progress: bool = False) -> FeatureIndex:
    """Run ``model`` over ``tokens [N, T]`` (ids) and index where each latent of ``dictionary`` fires. ``hook``
    defaults to the dictionary's input hook (``cfg.hook_name``). The first ``skip_positions`` positions of each
    row (e.g. BOS, whose activations are outliers) are left out."""
    return feature_indices(model, {0: (dictionary, hook)}, tokens, batch=batch, skip_positions=skip_positions,
                           progress=progress)[0]


def feature_indices(model, dictionaries: Mapping, tokens, *, batch: int = 8, skip_positions: int = 0,
                    progress: bool = False) -> dict:
    """:func:`feature_index` for several dictionaries from one model pass: ``dictionaries`` maps a key to a
    dictionary or a ``(dictionary, hook)`` pair; returns the key -> :class:`FeatureIndex`."""
    from tqdm.auto import tqdm

    dicts = {}
    for key, d in dictionaries.items():
        d, hook = d if isinstance(d, tuple) else (d, None)
        hook = hook or d.cfg.hook_name
        if not hook:
            raise ValueError(f"dictionary {key!r} names no hook point (cfg.hook_name); pass (dictionary, hook)")
        dicts[key] = (d, hook)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [N, T] ids, got shape {tokens.shape}")
    N, T = tokens.shape
    names = sorted({h for _, h in dicts.values()})
    found = {key: ([], [], []) for key in dicts}
    for i in tqdm(range(0, N, batch), desc="feature index", disable=not progress, unit="batch"):
        chunk = tokens[i:i + batch]
        n = len(chunk)
        if n < batch:  # one shape, one compilation
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        _, cache = model.run_with_cache(jnp.asarray(chunk), names, return_logits=False)
        for key, (d, hook) in dicts.items():
            b, t, f, v = _entries(d, cache[hook], n, skip_positions)
            found[key][0].append(((i + b) * T + t).astype(np.int64))
            found[key][1].append(f.astype(np.int32))
            found[key][2].append(v.astype(np.float32))
    out = {}
    for key, (d, _) in dicts.items():
        pos, lat, val = (np.concatenate(x) for x in found[key])
        order = np.argsort(lat, kind="stable")
        width = int(d.cfg.width)
        starts = np.searchsorted(lat[order], np.arange(width + 1))
        out[key] = FeatureIndex(tokens, width, pos[order], lat[order], val[order], starts, skip_positions)
    return out


@dataclasses.dataclass
class FeatureCard(Result):
    """What a feature dashboard shows for one latent: its density and activations over the indexed tokens, the
    top-activating ``contexts`` (token strings with per-token activations), the activation histogram
    (``hist_counts``, ``hist_edges``), and the tokens its decoder direction ``promoted`` and ``suppressed``
    through the unembedding, with an optional ``explanation``."""

    latent: int
    label: str
    density: float
    n_active: int
    max_act: float
    contexts: list[dict]  # {"tokens": [str], "acts": [float], "center": int, "value": float, "row": int, "pos": int}
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    explanation: str | None = None

    def figures(self) -> list:
        """The activation histogram (when the latent fires) and the direct logit effect, as plotly figures."""
        return [spec.figure() for spec in self.figure_specs()]

    def figure_specs(self) -> list:
        """:meth:`figures` as plain data (:class:`interp.viz.figures.FigureSpec`), as a report draws them."""
        from interp.viz.figures import histogram_spec, logit_effect_spec

        specs = []
        if self.n_active:
            specs.append(histogram_spec(self.hist_counts, self.hist_edges, title=f"{self.label}: activations"))
        specs.append(logit_effect_spec(self.promoted, self.suppressed, title=f"{self.label}: direct logit effect"))
        return specs

    def html(self) -> str:
        """Header, statistics and highlighted contexts as an HTML fragment (figures not included)."""
        from interp.viz.figures import feature_card_html

        return feature_card_html(self)

    def _summary(self) -> Summary:
        facts = {"density": self.density, "active tokens": self.n_active, "max activation": self.max_act}
        if self.explanation:
            facts["explanation"] = self.explanation
        if self.contexts:
            c = self.contexts[0]
            facts["top context"] = "".join(c["tokens"][:c["center"] + 1])[-60:]
        top = [(f"promotes {t!r}", v) for t, v in self.promoted[:4]] + [(f"suppresses {t!r}", v)
                                                                         for t, v in self.suppressed[:4]]
        return Summary(f"feature card, {self.label}", {"context": len(self.contexts)}, facts, top,
                       "direct logit effect")


def logit_effects(model, direction) -> np.ndarray:
    """Direct effect of writing ``direction [D]`` into the residual stream on each logit (``[V]``; a stack of
    directions ``[n D]`` gives ``[n V]``): through the final norm's weight (its scale taken as 1) and the
    unembedding."""
    return np.asarray(_logit_effects(model, jnp.asarray(direction)))


@eqx.filter_jit
def _logit_effects(model, directions):
    # inside jit, a tied model's W_U (the embedding's transpose) is read in place, never copied
    return (directions.astype(jnp.float32) * model.ln_final.weight) @ model.W_U.astype(jnp.float32)


@eqx.filter_jit
def _top_logit_effects(model, directions, n: int):
    eff = _logit_effects(model, directions)
    top, top_ids = jax.lax.top_k(eff, n)
    bottom, bottom_ids = jax.lax.top_k(-eff, n)
    return top, top_ids, -bottom, bottom_ids


LOGIT_CHUNK = 256  # latents whose [chunk V] logit effects are formed at once


def feature_card(model, dictionary, index: FeatureIndex, latent: int, *, n_contexts: int = 10, before: int = 12,
                 after: int = 4, n_logits: int = 8, bins: int = 30, label: str | None = None,
                 explanations: Mapping | None = None) -> FeatureCard:
    """The dashboard of one latent from a :class:`FeatureIndex` (contexts at distinct positions, best first);
    ``explanations``: latent -> text, or an :class:`interp.explain.Explanations` (its labels, with scores)."""
    return feature_cards(model, dictionary, index, [latent], n_contexts=n_contexts, before=before, after=after,
                         n_logits=n_logits, bins=bins, labels=None if label is None else {latent: label},
                         explanations=explanations)[0]


def feature_cards(model, dictionary, index: FeatureIndex, latents, *, n_contexts: int = 10, before: int = 12,
                  after: int = 4, n_logits: int = 8, bins: int = 30, labels=None,
                  explanations: Mapping | None = None) -> list[FeatureCard]:
    """:func:`feature_card` for each of ``latents``, in their order; the logit effects of many latents come from
    one matmul per :data:`LOGIT_CHUNK` of them. ``labels``: the card titles, one per latent or a mapping
    latent -> title (default ``"latent {f}"``)."""
    latents = [int(f) for f in latents]
    for f in latents:
        if not 0 <= f < index.width:
            raise IndexError(f"latent {f} is out of range: the dictionary has {index.width} latents")
    n = min(n_logits, model.d_vocab)
    effects = []
    for i in range(0, len(latents), LOGIT_CHUNK):
        chunk = latents[i:i + LOGIT_CHUNK]
        size = min(LOGIT_CHUNK, 1 << (len(chunk) - 1).bit_length())  # a few shapes, a few compilations
        rows = np.asarray(chunk + [chunk[-1]] * (size - len(chunk)))
        effects.append([np.asarray(a)[:len(chunk)] for a in
                        _top_logit_effects(model, jnp.asarray(dictionary.W_dec)[rows], n)])
    top, top_ids, bottom, bottom_ids = (np.concatenate(parts) for parts in zip(*effects)) if effects else [[]] * 4
    if hasattr(explanations, "labels"):  # an interp.explain.Explanations
        explanations = explanations.labels()
    if labels is None or isinstance(labels, Mapping):
        labels = [(labels or {}).get(f) for f in latents]
    elif len(labels) != len(latents):
        raise ValueError(f"{len(labels)} labels for {len(latents)} latents; give one per latent, or a mapping")
    cards = []
    for j, f in enumerate(latents):
        promoted = list(zip(token_strings(model, top_ids[j]), map(float, top[j])))
        suppressed = list(zip(token_strings(model, bottom_ids[j]), map(float, bottom[j])))
        cards.append(_card(model, index, f, n_contexts, before, after, bins, labels[j],
                           (explanations or {}).get(f), promoted, suppressed))
    return cards


def _card(model, index: FeatureIndex, latent: int, n_contexts: int, before: int, after: int, bins: int, label,
          explanation, promoted, suppressed) -> FeatureCard:
    pos, val = index.entries(latent)
    _N, T = index.tokens.shape
    order = np.argsort(-val)[:n_contexts]
    contexts = []
    acts_grid = index.activations(latent) if len(order) else None
    for o in order:
        r, t = divmod(int(pos[o]), T)
        lo, hi = max(0, t - before), min(T, t + after + 1)
        strs = token_strings(model, index.tokens[r, lo:hi])
        contexts.append({"tokens": list(strs), "acts": [float(a) for a in acts_grid[r, lo:hi]], "center": t - lo,
                         "value": float(val[o]), "row": r, "pos": t})
    counts, edges = np.histogram(val, bins=bins) if len(val) else (np.zeros(0), np.zeros(1))
    return FeatureCard(
        latent=int(latent), label=label or f"latent {latent}", density=float(len(val) / max(index.n_tokens, 1)),
        n_active=len(val), max_act=float(val.max()) if len(val) else 0.0, contexts=contexts,
        hist_counts=counts, hist_edges=edges, promoted=promoted, suppressed=suppressed, explanation=explanation)


def graph_cards(model, transcoders, graph, tokens, *, indices: dict | None = None,
                explanations: Mapping | None = None) -> dict[int, FeatureCard]:
    """Dashboards of every kept feature node of ``graph`` over ``tokens [N, T]``; the layers' indices come from
    one model pass (``indices``, layer -> FeatureIndex, is filled in and reused). ``explanations``: layer -> the
    explanations of that layer's transcoder (latent -> text, or :class:`interp.explain.Explanations`)."""
    indices = {} if indices is None else indices
    s = graph.slices()["feature"]
    feats = [int(i) for i in graph.kept() if graph.kind(int(i)) == "feature"]
    missing = sorted({int(graph.feature_layer[i - s.start]) for i in feats} - set(indices))
    if missing:
        indices.update(feature_indices(
            model, {l: (transcoders.dictionaries[l], transcoders.hook_in.format(layer=l)) for l in missing}, tokens,
            skip_positions=transcoders.skip_positions))
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for i in feats:
        by_layer.setdefault(int(graph.feature_layer[i - s.start]), []).append((i, int(graph.feature_id[i - s.start])))
    cards = {}
    for l, nodes in by_layer.items():
        made = feature_cards(model, transcoders.dictionaries[l], indices[l], [f for _, f in nodes], n_contexts=6,
                             labels=[graph.label(i) for i, _ in nodes], explanations=(explanations or {}).get(l))
        cards.update(zip((i for i, _ in nodes), made))
    return {i: cards[i] for i in feats}
