"""GCG input search on the default model against nanogcg on the same weights, target and budget.

The task: a 10-token suffix after "The capital of France is" that makes " London" the top next token. Both start
from the same span ("x x x ..."), take the same number of candidates per step and of gradient replacements per
position, allow printable ASCII tokens only, drop candidates that do not survive retokenization, and stop as soon
as " London" is the argmax. Reported: steps and seconds to success, the final loss (cross-entropy of " London",
nats; the same number in both), and the seconds each needs to first reach the loss both reach. interp is timed in a
fresh run (compilation included) and again with its two programs compiled.
nanogcg 0.3.0 pins transformers<=4.47.1; it is installed with --no-deps against the transformers here and run without
its prefix cache, which fails under transformers 5 (noted in the output). nanogcg runs through transformers on
the default GGUF (its chat template replaced by the bare prompt, so both see the same tokens). If nanogcg is not
installed or fails, the output says so and gives no figures for it.

    python benchmarks/search.py [--steps 60] [--batch 64] [--topk 64]
"""

from __future__ import annotations

import argparse
import os
import time

from _timing import running_peer

PROMPT, TARGET, SPAN, INIT = "The capital of France is", " London", 10, "x x x x x x x x x x"


def first_reaching(losses, seconds, level: float) -> float | None:
    for loss, t in zip(losses, seconds):
        if loss <= level + 1e-6:
            return t
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64, help="candidates per step (nanogcg's search_width)")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import interp
    from interp import search
    from interp.weights import default_gguf_path

    model = interp.load("smollm2-135m")
    print(f"{PROMPT!r} + {SPAN}-token suffix -> {TARGET!r}; budget {args.steps} steps x {args.batch} candidates, "
          f"top-{args.topk}; start {INIT!r}")
    print(f"before the search: top next {model.top_next(PROMPT + ' ' + INIT, 3)}")
    obj = search.logprob(model, TARGET)
    rows, notes = {}, []
    for label in ("interp (fresh, compiling)", "interp (compiled)"):
        r = search.gcg(model, obj, PROMPT, span=f"suffix:{SPAN}", steps=args.steps, topk=args.topk, batch=args.batch,
                       init=INIT, seed=args.seed, progress=False)
        rows[label] = dict(success=r.success, steps=r.steps, seconds=r.seconds, to_success=r.seconds_to_success,
                           loss=min(r.history[0]), losses=r.history[0], times=r.step_seconds[0], text=r.input_text)
    check = model.top_next(r.input_text, 1)[0]
    print(f"interp's input {r.input_text!r}: top next {check[0]!r} (p={check[1]:.3f})")

    with running_peer("nanogcg", notes):
        import nanogcg
        import torch
        import transformers
        from nanogcg import GCGConfig

        gguf = default_gguf_path("smollm2-135m")
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                               dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
        ours = [int(i) for i in model.to_tokens(PROMPT)[0]]
        theirs = tok(PROMPT)["input_ids"]
        if ours != theirs:
            notes.append(f"prompt tokens differ: interp {ours}, transformers {theirs}")
        stamps = []
        original = nanogcg.gcg.GCG.compute_token_gradient

        def stamped(self, *a, **k):  # one call per step: a step ends where the next gradient starts
            stamps.append(time.perf_counter())
            return original(self, *a, **k)

        nanogcg.gcg.GCG.compute_token_gradient = stamped
        # nanogcg 0.3.0 indexes the key/value cache as a list, which transformers 5 no longer returns: without
        # its prefix cache it runs (it then recomputes the prompt's 5 tokens with every candidate, as interp does)
        cfg = GCGConfig(num_steps=args.steps, optim_str_init=INIT, search_width=args.batch, topk=args.topk,
                        early_stop=True, seed=args.seed, verbosity="WARNING", use_prefix_cache=False)
        notes.append(f"nanogcg runs with use_prefix_cache=False: its prefix cache fails under transformers "
                     f"{transformers.__version__} ('DynamicCache' object is not subscriptable)")
        t0 = time.perf_counter()
        res = nanogcg.run(hf, tok, PROMPT, TARGET, cfg)
        end = time.perf_counter()
        times = [s - t0 for s in stamps[1:]] + [end - t0]
        with torch.no_grad():
            ids = tok(PROMPT + res.best_string, return_tensors="pt")["input_ids"]
            top = int(hf(ids).logits[0, -1].argmax())
        success = tok.decode([top]) == TARGET
        rows[f"nanogcg {nanogcg.__version__ if hasattr(nanogcg, '__version__') else ''} (torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads)"] = dict(
            success=success, steps=len(res.losses), seconds=end - t0,
            to_success=(end - t0) if success else None, loss=min(res.losses), losses=res.losses, times=times,
            text=PROMPT + res.best_string)

    level = max(row["loss"] for row in rows.values())
    print(f"\n{'':44} {'success':>7} {'steps':>5} {'s total':>8} {'s to success':>12} {'best loss':>9} "
          f"{'s to loss ' + format(level, '.3f'):>16}")
    for label, row in rows.items():
        to = row["to_success"]
        reach = first_reaching(row["losses"], row["times"], level)
        print(f"{label:44} {row['success']!s:>7} {row['steps']:5d} {row['seconds']:8.1f} "
              f"{'-' if to is None else format(to, '.1f'):>12} {row['loss']:9.3f} "
              f"{'-' if reach is None else format(reach, '.1f'):>16}")
    for label, row in rows.items():
        print(f"  {label}: {row['text']!r}")
    peers = [k for k in rows if k.startswith("nanogcg")]
    if peers:
        theirs = first_reaching(rows[peers[0]]["losses"], rows[peers[0]]["times"], level)
        for label in [k for k in rows if k.startswith("interp")]:
            ours = first_reaching(rows[label]["losses"], rows[label]["times"], level)
            if ours and theirs:
                print(f"{label}: {theirs / ours:.2f}x nanogcg's speed to loss {level:.3f}")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
