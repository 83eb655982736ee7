"""Examples of a latent for explaining and scoring, drawn from a :class:`~interp.features.FeatureIndex`.

For each latent: the top-activating contexts and contexts sampled across activation quantiles (activating), random
contexts where it never fires, and "hard" ones that contain the tokens it fires on most yet stay silent. Every
context is a window of token ids with the latent's activation on each token. A :class:`LatentExamples` keeps the
examples shown to the explainer (``train``) apart from the held-out ones the scorers use (``test_pos``,
``test_neg``): the windows of the two never overlap, so an explanation is never scored on text it was written
from.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from interp.results import token_strings


@dataclasses.dataclass
class Context:
    """A window of text: ``ids`` and their strings ``tokens``, the latent's activation on each token (``acts``),
    where it came from (``row``, ``start``: its first position in that row), and how it was drawn (``kind``:
    "top", "quantile", "random" or "hard")."""

    ids: list[int]
    tokens: list[str]
    acts: list[float]
    row: int
    start: int
    kind: str

    @property
    def max_act(self) -> float:
        """The largest activation in the window (0 for a non-activating one)."""
        return max(self.acts, default=0.0)

    def marked(self, threshold: float = 0.0, *, marks: list[int] | None = None, left: str = "<<",
               right: str = ">>") -> str:
        """The text with the tokens whose activation exceeds ``threshold`` (or the positions ``marks``) wrapped in
        ``left``/``right``; neighbouring marked tokens share one pair of marks."""
        on = [a > threshold for a in self.acts] if marks is None else [i in set(marks) for i in range(len(self.ids))]
        out, inside = [], False
        for tok, m in zip(self.tokens, on):
            if m and not inside:
                out.append(left)
            if not m and inside:
                out.append(right)
            out.append(tok)
            inside = m
        if inside:
            out.append(right)
        return "".join(out)

    def as_dict(self) -> dict:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LatentExamples:
    """The examples of one latent: ``train`` (activating, shown to the explainer), ``train_neg`` (non-activating,
    shown to an explainer that contrasts, such as the baseline), and the held-out ``test_pos`` / ``test_neg`` for
    scoring. ``n_active`` counts the latent's activations in the index; 0 means dead on that text."""

    latent: int
    train: list[Context]
    train_neg: list[Context]
    test_pos: list[Context]
    test_neg: list[Context]
    n_active: int
    max_act: float

    @property
    def dead(self) -> bool:
        """True when the latent never fired on the indexed text."""
        return self.n_active == 0


def _windows_overlap(a: tuple[int, int], taken: dict[int, list[int]], width: int) -> bool:
    r, s = a
    return any(abs(s - s2) < width for s2 in taken.get(r, ()))


class ExampleSampler:
    """Draws :class:`LatentExamples` from a feature index (one sampler per index: it precomputes where each token id
    occurs). ``window``: tokens per context, the activating token placed ``after`` tokens before its end;
    ``n_top`` top-activating and ``n_quantile_train`` quantile-sampled contexts are shown to the explainer;
    ``n_test`` activating contexts drawn evenly from ``quantiles`` activation bins and ``n_test`` non-activating ones
    are held out, and ``n_train_neg`` non-activating contexts are shown to contrasting explainers; a
    ``hard_fraction`` of both (when there are any) are hard ones, holding a token the latent fires on most."""

    def __init__(self, model, index, *, window: int = 24, after: int = 4, n_top: int = 10,
                 n_quantile_train: int = 6, n_train_neg: int = 10, n_test: int = 10, quantiles: int = 5,
                 hard_fraction: float = 0.5, seed: int = 0):
        N, T = index.tokens.shape
        first = index.skip_positions
        if T - first < 2:
            raise ValueError(f"the index's contexts have {T} positions ({first} skipped): too short for examples")
        self.window = min(window, T - first)
        self.after = min(after, self.window - 1)
        self.model, self.index = model, index
        self.n_top, self.n_quantile_train, self.n_train_neg = n_top, n_quantile_train, n_train_neg
        self.n_test, self.quantiles, self.hard_fraction, self.seed = n_test, quantiles, hard_fraction, seed
        self._strings: dict[int, str] = {}
        flat = index.tokens.reshape(-1)
        order = np.argsort(flat, kind="stable")
        self._occ_ids, self._occ_starts = np.unique(flat[order], return_index=True)
        self._occ_order = order

    # ------------------------------------------------------------------ helpers
    def _text(self, ids) -> list[str]:
        missing = [int(i) for i in ids if int(i) not in self._strings]
        if missing:
            for i, s in zip(missing, token_strings(self.model, missing)):
                self._strings[i] = s
        return [self._strings[int(i)] for i in ids]

    def _start_for(self, t: int) -> int:
        T = self.index.tokens.shape[1]
        lo = self.index.skip_positions
        return int(np.clip(t - (self.window - 1 - self.after), lo, T - self.window))

    def _context(self, dense: np.ndarray, r: int, s: int, kind: str) -> Context:
        ids = [int(i) for i in self.index.tokens[r, s:s + self.window]]
        return Context(ids, self._text(ids), [float(a) for a in dense[r, s:s + self.window]], int(r), int(s), kind)

    def _occurrences(self, token_id: int) -> np.ndarray:
        k = np.searchsorted(self._occ_ids, token_id)
        if k >= len(self._occ_ids) or self._occ_ids[k] != token_id:
            return np.zeros(0, np.int64)
        end = self._occ_starts[k + 1] if k + 1 < len(self._occ_starts) else len(self._occ_order)
        return self._occ_order[self._occ_starts[k]:end]

    # ------------------------------------------------------------------ sampling
    def __call__(self, latent: int) -> LatentExamples:
        """The examples of ``latent`` (deterministic for the sampler's seed and the latent)."""
        index = self.index
        pos, val = index.entries(int(latent))
        if len(val) == 0:
            return LatentExamples(int(latent), [], [], [], [], 0, 0.0)
        rng = np.random.default_rng([self.seed, int(latent)])
        N, T = index.tokens.shape
        dense = index.activations(int(latent))
        taken: dict[int, list[int]] = {}

        def take(p: int, kind: str, out: list) -> bool:
            r, t = divmod(int(p), T)
            s = self._start_for(t)
            if _windows_overlap((r, s), taken, self.window):
                return False
            taken.setdefault(r, []).append(s)
            out.append(self._context(dense, r, s, kind))
            return True

        order = np.argsort(-val, kind="stable")
        train: list[Context] = []
        for o in order:
            if len(train) >= self.n_top:
                break
            take(pos[o], "top", train)
        # quantile bins over the remaining activations (equal counts per bin), sampled evenly
        rest = order[len(train):] if len(order) > len(train) else order[:0]
        bins = [b for b in np.array_split(rest[::-1], self.quantiles) if len(b)]  # weakest bin first
        test_pos: list[Context] = []
        per_bin_test = -(-self.n_test // max(len(bins), 1))
        per_bin_train = -(-self.n_quantile_train // max(len(bins), 1))
        quant_train: list[Context] = []
        for b in bins:
            got_test = got_train = 0
            for o in rng.permutation(b):
                if got_test < per_bin_test and len(test_pos) < self.n_test:
                    got_test += take(pos[o], "quantile", test_pos)
                elif got_train < per_bin_train and len(quant_train) < self.n_quantile_train:
                    got_train += take(pos[o], "quantile", quant_train)
                else:
                    break
        train += quant_train

        # non-activating windows: the latent is zero on every token of the window
        lo = index.skip_positions
        starts_ok = np.ones((N, T - self.window + 1), bool)
        fired = dense > 0
        if fired.any():
            c = np.concatenate([np.zeros((N, 1), int), np.cumsum(fired, axis=1)], axis=1)
            starts_ok = (c[:, self.window:] - c[:, :-self.window]) == 0
        starts_ok[:, :lo] = False
        n_hard_test = int(round(self.n_test * self.hard_fraction))
        n_hard_train = int(round(self.n_train_neg * self.hard_fraction))
        top_tokens = Counter(c.ids[int(np.argmax(c.acts))] for c in train if c.kind == "top")
        hard: list[Context] = []
        for tok, _ in top_tokens.most_common(3):
            occ = self._occurrences(tok)
            for p in rng.permutation(occ)[:200]:
                if len(hard) >= n_hard_test + n_hard_train:
                    break
                r, t = divmod(int(p), T)
                s = self._start_for(t)
                if t >= lo and starts_ok[r, s] and not _windows_overlap((r, s), taken, self.window):
                    taken.setdefault(r, []).append(s)
                    hard.append(self._context(dense, r, s, "hard"))
        # hard ones alternate between the held-out set and the explainer's, the held-out set first
        hard_test, hard_train = [], []
        for h in hard:
            take_test = len(hard_test) < n_hard_test and (len(hard_test) <= len(hard_train) or
                                                          len(hard_train) >= n_hard_train)
            (hard_test if take_test else hard_train).append(h)
        negatives: list[Context] = []
        cand_r, cand_s = np.nonzero(starts_ok)
        need_test = self.n_test - len(hard_test)
        want = need_test + self.n_train_neg - len(hard_train)
        for k in rng.permutation(len(cand_r))[: 20 * want + 20]:
            if len(negatives) >= want:
                break
            r, s = int(cand_r[k]), int(cand_s[k])
            if not _windows_overlap((r, s), taken, self.window):
                taken.setdefault(r, []).append(s)
                negatives.append(self._context(dense, r, s, "random"))
        test_neg = hard_test + negatives[:need_test]
        train_neg = hard_train + negatives[need_test:]
        return LatentExamples(int(latent), train, train_neg, test_pos, test_neg, int(len(val)), float(val.max()))
