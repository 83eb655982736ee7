"""The ``interp`` command line. ``interp demo`` runs the main job on the packaged defaults."""

from __future__ import annotations

import argparse
import sys
import time

DEMO_PROMPTS = (
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "one, two, three, four,",
)


def demo(model_name: str = "smollm2-135m", prompts=DEMO_PROMPTS, k: int = 5, out=sys.stdout) -> None:
    """Top next-token predictions and a per-layer logit lens for a few prompts."""
    import numpy as np

    import interp
    from interp.circuits.lens import logit_lens

    t0 = time.perf_counter()
    model = interp.load(model_name)
    print(f"loaded {model_name}: {model.n_layers} layers, d_model {model.d_model}, "
          f"vocab {model.d_vocab} ({time.perf_counter() - t0:.1f} s)", file=out)
    for prompt in prompts:
        print(f"\n=== {prompt!r}", file=out)
        for tok, p in model.top_next(prompt, k=k):
            print(f"  {p:6.3f}  {tok!r}", file=out)
        lens = logit_lens(model, prompt)
        probs = np.asarray(lens.probs()[:, 0, -1])
        final = int(probs[-1].argmax())
        print(f"  logit lens (what the residual stream predicts after each block; final answer {model.to_string([final])!r}):",
              file=out)
        print(f"  {'row':>9}  {'top token':<16} {'p(top)':>7}  {'p(final)':>8}  {'rank(final)':>11}", file=out)
        for label, row in zip(lens.labels, probs):
            top = int(row.argmax())
            rank = int((row > row[final]).sum())
            print(f"  {label:>9}  {model.to_string([top])!r:<16} {row[top]:7.3f}  {row[final]:8.3f}  {rank:11d}", file=out)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the main job on the packaged default model")
    d.add_argument("--model", default="smollm2-135m", help="packaged name, checkpoint folder or .gguf file")
    d.add_argument("--prompt", action="append", help="a prompt (repeatable); default: a built-in set")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.model, tuple(args.prompt) if args.prompt else DEMO_PROMPTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
