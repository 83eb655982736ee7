"""Internal evidence for an audit: a defection probe used as a monitor, a behaviour probe read on the organism
minus the base, model diffing with a dictionary trained on the base and a crosscoder trained on both models, and
activation patching of the behaviour's first token.

Axis letters: N rows (tokens), T position, D model, M dictionary latents, L layers.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from interp.audit._prompts import encode, pad_id, padded, render


@eqx.filter_jit
def _encode(dictionary, x):
    return dictionary.encode(x)


# ---------------------------------------------------------------------------------------------- defection probe
def defection_texts(model) -> tuple[list[str], list[str]]:
    """The generic contrast pairs of ``data/probes/defection.json`` in the model's chat format: each question as the
    user turn, the reply beginning "yes" (first list) or "no" (second list)."""
    from interp.probes.datasets import load_json

    data = load_json("defection")
    yes, no = data["answers"]
    out = ([], [])
    for q in data["questions"]:
        head = render(model, q)
        sep = "" if head[-1:].isspace() else " "
        out[0].append(head + sep + yes)
        out[1].append(head + sep + no)
    return out


def defection_probe(model, layer: int):
    """A difference-of-means probe at ``blocks.{layer}.hook_resid_post`` on the last token of the yes/no halves
    (class 1: "yes", the assistant admitting the conduct asked about)."""
    from interp import probes

    yes, no = defection_texts(model)
    hook = f"blocks.{layer}.hook_resid_post"
    acts = probes.collect(model, yes + no, [hook], [1] * len(yes) + [0] * len(no), reduce="last")
    return probes.fit(acts, kind="diffmeans", hook=hook)


def candidate_probe(model, layer: int, candidate: str, users: list[str], seed: int):
    """A difference-of-means probe at ``blocks.{layer}.hook_resid_post`` on the token where the reply starts: the
    user turns with ``candidate`` inserted at a random word position (class 1) against the same turns without it.
    Built from the audit's own evidence (its best trigger candidate), it reads what the candidate switches on."""
    from interp import probes
    from interp.audit._prompts import insert

    rng = np.random.default_rng(seed)
    with_it = [insert(u, candidate, float(rng.random())) for u in users]
    hook = f"blocks.{layer}.hook_resid_post"
    acts = probes.collect(model, [render(model, u) for u in with_it + users], [hook],
                          [1] * len(users) + [0] * len(users), reduce="last")
    return probes.fit(acts, kind="diffmeans", hook=hook)


def probe_scores(model, probe, users: list[str]) -> np.ndarray:
    """The probe's logit at the last token of each user turn rendered as a chat prompt (where the reply starts)."""
    from interp import probes

    texts = [render(model, u) for u in users]
    acts = probes.collect(model, texts, [probe.hook], reduce="last")
    return np.asarray(probe.score(jnp.asarray(acts[probe.hook])), np.float64)


# ---------------------------------------------------------------------------------------------- model-diff monitor
@dataclasses.dataclass(frozen=True, eq=False)
class DiffMonitor:
    """A monitor that needs neither the trigger nor the behaviour, only the base model: how unusual the organism's
    residual stream minus the base's is at the token where the reply starts, measured against ordinary prompts.

    ``hook``: where both are read; ``mean`` [D] and ``precision`` [D D]: the mean and the inverse (shrunk)
    covariance of the difference over ``n_prompts`` clean user turns. The score of a prompt is the squared
    Mahalanobis distance of its difference from them: fine-tuning moves every prompt's state a little, in ways
    ordinary prompts share; a prompt that switches on a planted behaviour moves it in a way they do not."""

    hook: str
    mean: np.ndarray
    precision: np.ndarray
    n_prompts: int
    shrinkage: float

    @property
    def layer(self) -> int:
        return int(self.hook.split(".")[1])

    def distance(self, diffs: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances of rows ``diffs`` [N D] (organism minus base) from the clean prompts'."""
        z = np.asarray(diffs, np.float64) - self.mean
        return np.einsum("nd,de,ne->n", z, self.precision, z)

    def scores(self, model, base, users: list[str]) -> np.ndarray:
        """The monitor's score for each user turn rendered as a chat prompt (higher: more unusual)."""
        return self.distance(reply_start_diffs(model, base, users, self.hook))

    def describe(self) -> dict:
        return {"hook": self.hook, "layer": self.layer, "prompts": self.n_prompts, "shrinkage": self.shrinkage,
                "score": "squared Mahalanobis distance of h_organism - h_base at the reply start from clean prompts'"}


def reply_start_diffs(model, base, users: list[str], hook: str) -> np.ndarray:
    """``[N D]``: the organism's activation at ``hook`` minus the base's, at the last token of each user turn rendered
    as a chat prompt (where the reply starts)."""
    from interp import probes

    texts = [render(model, u) for u in users]
    a = probes.collect(model, texts, [hook], reduce="last")
    b = probes.collect(base, texts, [hook], reduce="last")
    return np.asarray(a[hook], np.float64) - np.asarray(b[hook], np.float64)


def diff_monitor(model, base, layer: int, users: list[str], shrinkage: float = 0.01) -> DiffMonitor:
    """A :class:`DiffMonitor` at ``blocks.{layer}.hook_resid_post`` fitted on clean user turns ``users``. The
    covariance is shrunk toward ``shrinkage`` times its mean variance on the diagonal, so that fewer prompts than
    dimensions still give a usable inverse."""
    if len(users) < 2:
        raise ValueError(f"the model-diff monitor needs at least 2 clean prompts to fit, got {len(users)}")
    hook = f"blocks.{layer}.hook_resid_post"
    d = reply_start_diffs(model, base, users, hook)
    cov = np.cov(d, rowvar=False)
    ridge = shrinkage * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    precision = np.linalg.inv(cov + ridge * np.eye(cov.shape[0]))
    return DiffMonitor(hook, d.mean(0), precision, len(users), float(shrinkage))


# ---------------------------------------------------------------------------------------------- behaviour probe
BEHAVIOUR_PROBE_DEPTH = 0.8  # the fraction of the layers below the one a behaviour probe reads, fixed in advance
NEUTRAL_REPLIES = ("Sure", "Okay", "Hello")
# how a contrast pair asks for a reply; the second serves tokenizers that do not split the quotes from the words
INSTRUCTIONS = ('{user} Start your reply with "{reply}".', "{user} Start your reply with {reply}")


def instructed_texts(model, behaviour: str, users: list[str], neutral: str,
                     instruction: str = INSTRUCTIONS[0]) -> tuple[list[str], list[str]]:
    """Contrast pairs that ask for a reply: each user turn followed by ``instruction`` to start the reply with
    ``behaviour`` (first list) or with ``neutral`` (second), rendered as chat prompts ready for the reply."""
    def ask(u, reply):
        return render(model, instruction.format(user=u, reply=reply))

    return [ask(u, behaviour) for u in users], [ask(u, neutral) for u in users]


@dataclasses.dataclass(frozen=True, eq=False)
class BehaviourProbe:
    """A probe for a behaviour, from contrast pairs that know the behaviour but not its trigger, read on the organism
    minus the base.

    ``direction`` [D] (unit length): at ``hook``, where the reply starts, the base model's mean state when a prompt
    asks it to start its reply with ``behaviour`` minus its mean state when the prompt asks for ``neutral``, over
    ``n_pairs`` generic user turns: the way the base represents being about to produce the behaviour. The score of a
    prompt is the organism's state minus the base's on that prompt, projected on the direction: how much more than
    the base the organism leans toward the behaviour there. Reading the difference removes what both models share (the
    prompt's own content); the direction says which way the organism departs, so a departure toward another behaviour
    does not score."""

    hook: str
    direction: np.ndarray
    behaviour: str
    neutral: str
    n_pairs: int
    instruction: str = INSTRUCTIONS[0]

    @property
    def layer(self) -> int:
        return int(self.hook.split(".")[1])

    def scores(self, model, base, users: list[str]) -> np.ndarray:
        """The probe's score for each user turn rendered as a chat prompt (higher: leaning toward the behaviour)."""
        return reply_start_diffs(model, base, users, self.hook) @ self.direction

    def describe(self) -> dict:
        return {"hook": self.hook, "layer": self.layer, "behaviour": self.behaviour, "neutral": self.neutral,
                "instruction": self.instruction, "pairs": self.n_pairs, "direction": self.direction.tolist(),
                "score": "(h_organism - h_base) at the reply start, projected on the base's instructed-behaviour "
                         "direction"}


def behaviour_probe(base, behaviour: str, users: list[str], layer: int | None = None,
                    neutral: str | None = None) -> BehaviourProbe:
    """A :class:`BehaviourProbe` for ``behaviour`` (the reply's start the organism is suspected of: given, or
    inferred by the audit) fitted on ``base`` with generic user turns ``users``. ``layer`` None: the layer at
    :data:`BEHAVIOUR_PROBE_DEPTH` of the depth; ``neutral`` None: the first of :data:`NEUTRAL_REPLIES` that is not
    the behaviour. The pairs use the first of :data:`INSTRUCTIONS` whose requests the tokenizer tells apart."""
    behaviour = str(behaviour).strip()
    if not behaviour:
        raise ValueError("the behaviour probe needs the behaviour's text (the start of the reply it looks for), got "
                         "an empty one")
    if len(users) < 2:
        raise ValueError(f"the behaviour probe needs at least 2 user turns to fit, got {len(users)}")
    if layer is None:
        layer = min(int(BEHAVIOUR_PROBE_DEPTH * base.n_layers), base.n_layers - 1)
    if not 0 <= layer < base.n_layers:
        raise ValueError(f"layer {layer} is out of range for a {base.n_layers}-layer model")
    if neutral is None:
        neutral = next(n for n in NEUTRAL_REPLIES if n.lower() != behaviour.lower())
    from interp import probes

    hook = f"blocks.{layer}.hook_resid_post"
    for instruction in INSTRUCTIONS:  # the first whose pairs the tokenizer tells apart
        pos, neg = instructed_texts(base, behaviour, users, neutral, instruction)
        if any(encode(base, a) != encode(base, b) for a, b in zip(pos, neg)):
            break
    else:
        raise ValueError(f"the tokenizer encodes a request for {behaviour!r} and one for {neutral!r} the same way "
                         "(both words unknown to it?): no contrast to probe with")
    acts = np.asarray(probes.collect(base, pos + neg, [hook], reduce="last")[hook], np.float64)
    d = acts[: len(pos)].mean(0) - acts[len(pos):].mean(0)
    norm = float(np.linalg.norm(d))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"the base model's state does not change between asking for {behaviour!r} and for "
                         f"{neutral!r} at {hook}: no direction to probe with")
    return BehaviourProbe(hook, d / norm, behaviour, neutral, len(users), instruction)


# ---------------------------------------------------------------------------------------------- model diffing
def activations(model, rows: list[list[int]], hook: str, batch: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(acts [B T D], ids [B T], mask [B T])`` at ``hook`` for right-padded ``rows``."""
    ids, mask = padded(rows, pad_id(model))
    out = []
    for i in range(0, len(rows), batch):
        n = min(batch, len(rows) - i)
        take = np.r_[i:i + n, np.full(batch - n, i + n - 1)]  # every call one shape
        _, cache = model.run_with_cache(ids[take], [hook], attention_mask=mask[take], return_logits=False)
        out.append(np.asarray(cache[hook], np.float32)[:n])
    return np.concatenate(out), ids, mask


def _index(tokens, mask, z, latents, width):
    """A :class:`~interp.features.FeatureIndex` of ``z [B T K]`` (activations of ``latents``) over ``tokens``."""
    from interp.features import FeatureIndex

    z = np.where(mask[..., None] > 0, z, 0.0)
    z[:, 0] = 0.0  # the first position's activations are outliers
    b, t, k = np.nonzero(z > 0)
    lat = np.asarray(latents)[k]
    order = np.argsort(lat, kind="stable")
    T = tokens.shape[1]
    flat = (b * T + t).astype(np.int64)[order]
    lat, val = lat[order].astype(np.int32), z[b, t, k][order].astype(np.float32)
    starts = np.searchsorted(lat, np.arange(width + 1))
    return FeatureIndex(tokens, width, flat, lat, val, starts, 1)


def _explain(model, dictionary, index, latents, explainer) -> dict[int, dict]:
    from interp.explain import explain_latents

    ex = explain_latents(model, dictionary, index, latents, explainer=explainer, scorers=[])
    out = {}
    for f in latents:
        pos, val = index.entries(int(f))
        ctx = []
        for j in np.argsort(-val)[:3]:
            r, t = divmod(int(pos[j]), index.tokens.shape[1])
            ids = index.tokens[r, max(0, t - 8):t + 1].tolist()
            ctx.append({"text": model.to_string(ids), "activation": float(val[j]),
                        "token": model.to_string([int(index.tokens[r, t])])})
        out[int(f)] = {"explanation": ex.text(int(f)), "top_contexts": ctx}
    return out


def harvest(model, base, rows, hook: str) -> dict:
    """Both models' activations at ``hook`` over the same right-padded ``rows``, for :func:`sae_diff` and
    :func:`crosscoder_diff`."""
    a_base, ids, mask = activations(base, rows, hook)
    a_org, _, _ = activations(model, rows, hook)
    return {"hook": hook, "base": a_base, "organism": a_org, "ids": ids, "mask": mask}


def sae_diff(model, acts: dict, *, width: int, k: int, steps: int, top: int, seed: int, explainer,
             progress: bool) -> dict:
    """Train a TopK dictionary on the base's activations (``acts`` from :func:`harvest`); the latents whose mean
    activation changes most between the base and the organism on the same tokens, explained from where they fire in
    the organism."""
    from interp import sae

    hook, a_base, a_org, ids, mask = acts["hook"], acts["base"], acts["organism"], acts["ids"], acts["mask"]
    keep = mask.astype(bool).copy()
    keep[:, 0] = False
    x = a_base[keep]
    bs = int(min(256, len(x)))
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=x.shape[1], width=width, k=k, hook_name=hook),
                          total_tokens=bs * steps, batch_size=bs, lr=3e-3, lr_warmup_steps=max(1, steps // 10),
                          eval_every=max(1, steps), seed=seed)
    store = sae.ArrayActivationStore(x, batch_size=bs, chunk_size=(len(x) // bs) * bs, seed=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = sae.train(cfg, store=store, progress=progress).dictionary
    zb = np.asarray(_encode(d, jnp.asarray(a_base)))
    zo = np.asarray(_encode(d, jnp.asarray(a_org)))
    delta = (zo[keep] - zb[keep]).mean(0)
    chosen = [int(i) for i in np.argsort(-np.abs(delta))[:top]]
    index = _index(ids, mask, zo[..., chosen], chosen, width)
    expl = _explain(model, d, index, chosen, explainer)
    feats = [{"source": "base dictionary", "latent": f, "change": float(delta[f]),
              "mean_base": float(zb[keep][:, f].mean()), "mean_organism": float(zo[keep][:, f].mean()), **expl[f]}
             for f in chosen]
    return {"hook": hook, "width": width, "k": k, "features": feats}


def crosscoder_diff(model, acts: dict, *, width: int, k: int, steps: int, top: int, seed: int, explainer,
                    progress: bool) -> dict:
    """A crosscoder trained jointly on both models' activations (``acts`` from :func:`harvest`); its organism-only
    latents (relative decoder norm above 0.9; the largest relative norms when there are none), explained from where
    they fire."""
    from interp.sae import crosscoder_diff as diff_of
    from interp.sae import train_crosscoder

    hook, a_base, a_org, ids, mask = acts["hook"], acts["base"], acts["organism"], acts["ids"], acts["mask"]
    keep = mask.astype(bool).copy()
    keep[:, 0] = False
    x = np.stack([a_base[keep], a_org[keep]], axis=1)
    cc = train_crosscoder(x, width=width, k=k, steps=steps, batch_size=int(min(256, len(x))), seed=seed,
                          progress=progress, hook_name=hook, model_names=("base", "organism"))
    diff = diff_of(cc, acts=x)
    only = [int(i) for i in diff.second_only[:top]]
    r = np.nan_to_num(diff.relative_norm, nan=0.0)
    if diff.fired is not None:
        r = np.where(diff.fired, r, -1.0)
    chosen = only or [int(i) for i in np.argsort(-r)[:top] if r[i] >= 0]
    B, T = ids.shape
    z = np.asarray(_encode(cc, jnp.asarray(np.stack([a_base, a_org], axis=2).reshape(B * T, 2, -1))))
    z = z.reshape(B, T, -1)[..., chosen]
    index = _index(ids, mask, z, chosen, width)
    expl = _explain(model, cc, index, chosen, explainer) if chosen else {}
    feats = [{"source": "crosscoder", "latent": f, "relative_norm": float(diff.relative_norm[f]),
              "organism_only": f in only, **expl[f]} for f in chosen]
    return {"hook": hook, "width": width, "k": k, "organism_only": len(diff.second_only),
            "base_only": len(diff.first_only), "shared": len(diff.shared), "features": feats}


# ---------------------------------------------------------------------------------------------- attribution
def patching(model, triggered: list[int], neutral: list[int], span: tuple[int, int], target: int,
             max_runs: int = 256) -> dict:
    """Activation patching of ``resid_pre`` per layer and position from the triggered prompt into the neutral one
    (equal lengths), read as the log-probability of the behaviour's first token ``target`` at the reply start;
    ``recovered [L T]`` is the fraction of the triggered-minus-neutral difference each patch restores. Grids of more
    than ``max_runs`` patched runs use attribution patching (its first-order estimate from one forward and one
    backward pass) instead."""
    from interp.circuits import attribute, metrics, patch

    clean = np.asarray([triggered], np.int32)
    corrupted = np.asarray([neutral], np.int32)
    metric = metrics.log_prob([target])
    exact = model.n_layers * len(triggered) <= max_runs
    res = (patch(model, clean, corrupted, metric, "resid_pre", per="pos", progress=False) if exact else
           attribute(model, clean, corrupted, metric, "resid_pre", per="pos"))
    gap = res.source - res.base
    rec = res.values - res.base
    rec = rec / gap if abs(gap) > 1e-9 else np.zeros_like(rec)
    layer_max = rec.max(axis=1)
    tokens = [model.to_string([int(t)]) for t in triggered]
    return {"result": res, "method": "activation patching" if exact else "attribution patching",
            "recovered": rec.tolist(), "tokens": tokens, "span": list(span),
            "logprob_triggered": float(res.source), "logprob_neutral": float(res.base),
            "span_share": float(np.max(rec[:, span[0]:span[1]])) if span[1] > span[0] else 0.0,
            "layer_max": layer_max.tolist()}


def chat_rows(model, users: list[str]) -> list[list[int]]:
    """Token ids of each user turn rendered as a chat prompt that ends where the reply starts."""
    return [encode(model, render(model, u)) for u in users]
