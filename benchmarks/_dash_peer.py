"""sae-dashboard's side of benchmarks/dashboards.py, run by it as a subprocess in the venv that
benchmarks/peer_envs/dashboard.sh creates (sae-dashboard needs transformer-lens 2 and transformers < 4.57, which the
main venv does not hold).

    .venv-dashboard/bin/python benchmarks/_dash_peer.py --model HF_DIR --sae SAE_DIR --hook HOOK --tokens ids.npy \\
        --latents 0,1,2 --out dashboards.html [--batch 32] [--skip-positions 1] [--context 5]

The model is the checkpoint folder as TransformerLens (``_tl_peer.load_tl``: float32, no weight processing, checked
against transformers), the dictionary the SAELens folder as SAELens loads it, the tokens the ``[N, T]`` ids our side
wrote. After loading, and after a warm-up on one batch of contexts and two latents, one ``SaeVisRunner.run`` builds
the dashboards of every latent (all in one feature batch, so the model runs over the tokens once) and
``save_feature_centric_vis`` writes them to one HTML file. The last line of stdout is JSON: versions, seconds per
phase, and per latent the check values our side compares with its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

PACKAGES = ("sae-dashboard", "sae-lens", "transformer-lens", "transformers", "torch")


def load(model_dir: str, sae_dir: str):
    """(HookedTransformer with the folder's tokenizer, SAELens SAE, parity note)."""
    from _tl_peer import load_tl
    from sae_lens import SAE
    from transformers import AutoTokenizer

    tl, note = load_tl(model_dir)
    # Only the HTML writer reads the tokenizer (its vocabulary, to show tokens). Assigned after construction: through
    # the constructor TransformerLens would re-load it by name from the Hub.
    tl.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Llama's tokenizer pads on the left, and then TransformerLens masks every leading token equal to the pad id out
    # of attention (or fails without one): the contexts are unpadded, so the model must see them as they are.
    tl.tokenizer.padding_side = "right"
    sae = SAE.load_from_disk(sae_dir, device="cpu")
    sae.eval()
    # SaeVisRunner.run first folds each decoder row's norm into the encoder, which rescales the activations by the
    # row norms (TopKSAE refuses it outright unless rescale_acts_by_decoder_norm). Our side shows the dictionary's own
    # activations, so this side does too; with unit-norm decoder rows (our TopK SAEs keep them) it changes nothing.
    sae.fold_W_dec_norm = lambda: None
    return tl, sae, note


def vis_config(hook: str, latents: list[int], batch: int, skip_positions: int, context: int):
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig

    layout = SaeVisLayoutConfig.default_feature_centric_layout()
    layout.seq_cfg.buffer = (context, context)  # its default is (5, 5)
    return SaeVisConfig(
        hook_point=hook, features=latents,
        minibatch_size_features=len(latents),  # all latents in one batch: otherwise the model runs once per batch
        minibatch_size_tokens=batch, ignore_positions=list(range(skip_positions)), device="cpu", dtype="float32",
        feature_centric_layout=layout, verbose=False)


def check_values(data, latents: list[int], context: int) -> list[list]:
    """Per latent: [active tokens, top activation, its row, its position]. The active tokens are the activations
    histogram's counts (every nonzero activation outside the ignored positions); the top activation is the bold token
    of the first context of the top group (sae-dashboard keeps it ``context + 1`` positions from a row's start and
    ``context`` from its end, and rounds the values it keeps to 4 decimals)."""
    out = []
    for f in latents:
        fd = data.feature_data_dict[f]
        n_active = int(sum(fd.acts_histogram_data.bar_heights))
        groups = fd.sequence_data.seq_group_data
        top = groups[0].seq_data[0] if groups and groups[0].seq_data else None
        if top is None or n_active == 0:
            out.append([n_active, 0.0, -1, -1])
        else:
            out.append([n_active, float(top.feat_acts[context]), int(top.original_index),
                        int(top.qualifying_token_index)])
    return out


def forward_time(tl, hook: str, tokens, batch: int) -> float:
    """Seconds of the model alone over ``tokens``, stopped after the hook's block, caching only the hook (the least
    any dashboard code must run), in batches of ``batch`` contexts."""
    import torch

    layer = int(hook.split(".")[1])
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            tl.run_with_cache(tokens[i:i + batch], names_filter=[hook], stop_at_layer=layer + 1)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (transformers layout)")
    ap.add_argument("--sae", required=True, help="dictionary folder (SAELens layout)")
    ap.add_argument("--hook", required=True)
    ap.add_argument("--tokens", required=True, help=".npy of [N, T] token ids")
    ap.add_argument("--latents", required=True, help="comma-separated latent ids")
    ap.add_argument("--out", required=True, help="HTML file to write")
    ap.add_argument("--batch", type=int, default=32, help="contexts per forward pass")
    ap.add_argument("--skip-positions", type=int, default=1, help="positions left out at the start of each row")
    ap.add_argument("--context", type=int, default=5, help="tokens shown either side of a top activation")
    args = ap.parse_args()

    t_start = time.perf_counter()
    # TransformerLens and the runner print progress to stdout; it goes to stderr so stdout carries only the JSON
    with contextlib.redirect_stdout(sys.stderr):
        import numpy as np
        import torch
        from sae_dashboard.data_writing_fns import save_feature_centric_vis
        from sae_dashboard.sae_vis_runner import SaeVisRunner

        t_import = time.perf_counter()
        tl, sae, note = load(args.model, args.sae)
        tokens = torch.from_numpy(np.load(args.tokens).astype(np.int64))
        latents = [int(f) for f in args.latents.split(",")]
        t_load = time.perf_counter()

        warm_cfg = vis_config(args.hook, latents[:2], args.batch, args.skip_positions, args.context)
        warm = SaeVisRunner(warm_cfg).run(encoder=sae, model=tl, tokens=tokens[:args.batch])
        save_feature_centric_vis(warm, Path(args.out).with_suffix(".warmup.html"))
        t_warm = time.perf_counter()

        cfg = vis_config(args.hook, latents, args.batch, args.skip_positions, args.context)
        t0 = time.perf_counter()
        data = SaeVisRunner(cfg).run(encoder=sae, model=tl, tokens=tokens)
        t1 = time.perf_counter()
        save_feature_centric_vis(data, args.out)
        t2 = time.perf_counter()
        checks = check_values(data, latents, args.context)
        forward_s = forward_time(tl, args.hook, tokens, args.batch)

    seq = cfg.feature_centric_layout.seq_cfg
    print(json.dumps({
        "versions": {p: metadata.version(p) for p in PACKAGES},
        "threads": torch.get_num_threads(),
        "note": note,
        "import_s": t_import - t_start, "load_s": t_load - t_import, "warmup_s": t_warm - t_load,
        "compute_s": t1 - t0, "html_s": t2 - t1, "forward_s": forward_s, "html_bytes": Path(args.out).stat().st_size,
        "layout": {"top": seq.top_acts_group_size, "quantile_groups": seq.n_quantiles,
                   "per_quantile_group": seq.quantile_group_size, "buffer": list(seq.buffer),
                   "act_bins": cfg.feature_centric_layout.act_hist_cfg.n_bins,
                   "logit_bins": cfg.feature_centric_layout.logits_hist_cfg.n_bins,
                   "logit_rows": cfg.feature_centric_layout.logits_table_cfg.n_rows,
                   "feature_table_rows": cfg.feature_centric_layout.feature_tables_cfg.n_rows},
        "checks": checks,
    }))


if __name__ == "__main__":
    main()
