"""End-to-end TopK SAE training from text, against SAELens's training runner and sparsify's trainer, in one run.

Each trainer gets the same text (``--chars`` characters of a Gutenberg book from the shared corpora), the same
model weights (the default model, SmolLM2-135M-Instruct: interp loads the packaged model, SAELens gets a
TransformerLens model built from the converted folder, sparsify the transformers model of that folder, all float32
on CPU), the same hook (the residual stream after block ``--layer``), width, k, context size and batch of tokens,
and trains on ``--tokens`` activations. Each does what its own pipeline does: tokenize the text, run the model to
harvest activations, shuffle them (sparsify trains on each batch of sequences as it comes) and train; the wall
time covers all of it and leaves out only loading the model. interp's time includes compiling its programs.

    python benchmarks/sae_end_to_end.py [--tokens 204800] [--width 16384] [--k 32] [--layer 15] [--no-peers]

Figures: training tokens per second for each, and interp's ratio to each peer (target >= 2x both).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _timing import running_peer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "gutenberg" / "books"


def book_text(chars: int) -> str:
    text = ""
    for path in sorted(BOOKS.glob("*.txt")):
        text += path.read_text(encoding="utf-8") + "\n\n"
        if len(text) >= chars:
            break
    return text[:chars]


def run_interp(text: str, args) -> float:
    import interp
    from interp import sae

    model = interp.load()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "text.txt"
        corpus.write_text(text, encoding="utf-8")
        cfg = sae.TrainConfig(
            sae.TopKConfig(d_in=model.d_model, width=args.width, k=args.k,
                           hook_name=f"blocks.{args.layer}.hook_resid_post"),
            corpus=str(corpus), total_tokens=args.tokens, batch_size=args.batch, context_size=args.context,
            skip_positions=0, lr=3e-4, eval_every=0)
        t0 = time.perf_counter()
        sae.train(cfg, model=model, progress=False)
        return time.perf_counter() - t0


def run_saelens(text: str, args, folder: Path, notes: list[str]) -> float:
    import datasets
    from _tl_peer import load_tl
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )
    from transformers import AutoTokenizer

    tl, note = load_tl(folder)
    notes.append(note)
    tl.set_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    # documents of ~2,000 characters; the runner tokenizes them and packs them into contexts itself
    docs = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LanguageModelSAERunnerConfig(
            sae=TopKTrainingSAEConfig(d_in=tl.cfg.d_model, d_sae=args.width, k=args.k, dtype="float32",
                                      device="cpu"),
            model_name="smollm2-135m", hook_name=f"blocks.{args.layer}.hook_resid_post", dataset_path="",
            is_dataset_tokenized=False, streaming=False, context_size=args.context, training_tokens=args.tokens,
            train_batch_size_tokens=args.batch, store_batch_size_prompts=16, n_batches_in_buffer=32,
            device="cpu", act_store_device="cpu", dtype="float32", lr=3e-4, n_checkpoints=0,
            save_final_checkpoint=False, output_path=None, checkpoint_path=str(Path(tmp) / "ckpt"),
            n_eval_batches=0, logger=LoggingConfig(log_to_wandb=False), verbose=False)
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=datasets.Dataset.from_dict({"text": docs}),
                                                override_model=tl)
        t0 = time.perf_counter()
        runner.run()
        return time.perf_counter() - t0


def run_sparsify(text: str, args, folder: Path) -> float:
    import datasets
    import torch
    from sparsify import SaeConfig, TrainConfig, Trainer
    from sparsify.data import chunk_and_tokenize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    docs = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = chunk_and_tokenize(datasets.Dataset.from_dict({"text": docs}), tok, max_seq_len=args.context,
                                  load_from_cache_file=False)
        rows = args.tokens // args.context
        data = data.select(range(min(rows, len(data))))
        cfg = TrainConfig(SaeConfig(num_latents=args.width, k=args.k), batch_size=args.batch // args.context,
                          layers=[args.layer], optimizer="adam", lr=3e-4, save_every=10**9, log_to_wandb=False,
                          save_dir=str(Path(tmp) / "out"))
        Trainer(cfg, data, hf).fit()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=204_800, help="training activations (tokens)")
    ap.add_argument("--width", type=int, default=16_384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--context", type=int, default=128, help="tokens per context")
    ap.add_argument("--batch", type=int, default=4096, help="activations per training step")
    ap.add_argument("--chars", type=int, default=1_500_000, help="characters of text given to every trainer")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()

    import jax

    from interp.weights import ensure_default

    text = book_text(args.chars)
    folder = Path(ensure_default())
    seconds, notes = {}, []
    seconds["interp (interp.sae.train)"] = run_interp(text, args)
    if not args.no_peers:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        with running_peer("SAELens", notes):
            seconds["SAELens (LanguageModelSAETrainingRunner)"] = run_saelens(text, args, folder, notes)
        with running_peer("sparsify", notes):
            seconds["sparsify (Trainer.fit)"] = run_sparsify(text, args, folder)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"{args.tokens} training tokens, width {args.width}, k {args.k}, blocks.{args.layer}.hook_resid_post, "
          f"contexts of {args.context}, {args.batch} tokens a step")
    for name, sec in seconds.items():
        print(f"  {name:<44} {sec:8.1f} s  {args.tokens / sec:9.0f} tokens/s")
    ours = seconds["interp (interp.sae.train)"]
    for name, sec in seconds.items():
        if not name.startswith("interp"):
            print(f"  interp vs {name}: {sec / ours:.2f}x (target >= 2x)")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
