"""circuit-tracer's side of benchmarks/graph_vs_circuit_tracer.py, run by it as a subprocess (one prompt per process,
so peak memory is per run) in the venv that benchmarks/peer_envs/circuit_tracer.sh creates.

    .venv-circuit-tracer/bin/python benchmarks/_ct_peer.py --model HF_DIR --transcoders CT_DIR --tokens ids.npy \\
        --special-ids 1,2,2 --out graph.npz [--max-feature-nodes 512] [--max-logits 10] [--logit-prob 0.95] \\
        [--batch-size 256] [--calls 2]

The model is the checkpoint folder through circuit-tracer's nnsight backend (a transformers ``LlamaForCausalLM``,
float32 on CPU, eager attention); the transcoders are the per-layer files our side converted to circuit-tracer's
layout (``layer_{l}.safetensors``: ``W_enc``/``W_dec`` ``[M, D]``, ``b_enc``, ``b_dec``, optional ``W_skip``; the
encoder already divided by the MLP norm's weight, since circuit-tracer reads ``mlp.hook_in``, after that weight,
where ours read before it). circuit-tracer's loader builds ReLU or JumpReLU transcoders only, so the TopK ones are
built here, with the activation ours uses: ``relu(top_k(pre))`` (circuit-tracer's own ``TopK`` keeps the k largest
pre-activations even where they are negative). ``--calls`` times ``attribute`` that many times in this process.

``--out`` gets an .npz in the layout the driver compares: ``labels [N, 4]`` (kind, a, b, c per node: feature
(layer, pos, id), error (layer, pos), embedding (pos), logit (token id); kinds 0..3), ``rows [R, N]`` with
``row_nodes [R]`` (the adjacency's rows that hold edges: features and logits), and every active feature
``active [A, 3]`` with its activation ``active_values [A]``. The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PACKAGES = ("circuit-tracer", "nnsight", "transformers", "torch")
FEATURE, ERROR, EMBED, LOGIT = range(4)


class ReluTopK(torch.nn.Module):
    """Keeps each position's ``k`` largest pre-activations, then rectifies them: what our TopK transcoders do."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx = torch.topk(x, self.k, dim=-1)
        return torch.zeros_like(x).scatter_(-1, idx, torch.relu(vals))


def load_transcoders(folder: Path):
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.yaml").read_text())  # written as JSON, which YAML reads too
    tcs = {}
    for layer, path in enumerate(cfg["transcoders"]):
        sd = load_file(path)
        d_tc, d_model = sd["W_enc"].shape
        tc = SingleLayerTranscoder(d_model, d_tc, ReluTopK(cfg["k"]), layer, skip_connection="W_skip" in sd,
                                   device=torch.device("cpu"), dtype=torch.float32)
        tc.load_state_dict(sd)
        tcs[layer] = tc
    return TranscoderSet(tcs, feature_input_hook=cfg["feature_input_hook"],
                         feature_output_hook=cfg["feature_output_hook"], scan=cfg.get("scan"))


def model_tokenizer(model_dir: str, bos: int, eos: int, pad: int):
    """The folder's tokenizer with the model's special tokens. The folder declares none, so transformers would add
    ``<s>``, ``</s>`` and ``<unk>`` as new ids past the vocabulary, and circuit-tracer, not finding the prompt's first
    token among the special ones, would prepend its BOS (id 49152, outside the embedding)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=raw.id_to_token(bos),
                                   eos_token=raw.id_to_token(eos), pad_token=raw.id_to_token(pad))


def rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def graph_arrays(g) -> dict:
    """The graph in the driver's layout (see the module docstring)."""
    n_layers, T = g.cfg.n_layers, g.n_pos
    sel = g.active_features[g.selected_features].numpy()
    F, K = len(sel), len(g.logit_targets)
    labels = np.full((F + n_layers * T + T + K, 4), -1, np.int64)
    labels[:F, 0], labels[:F, 1:] = FEATURE, sel
    err = np.arange(n_layers * T)
    labels[F:F + n_layers * T, :3] = np.stack([np.full_like(err, ERROR), err // T, err % T], 1)
    labels[F + n_layers * T:F + n_layers * T + T, :2] = np.stack([np.full(T, EMBED), np.arange(T)], 1)
    labels[-K:, :2] = np.stack([np.full(K, LOGIT), [t.vocab_idx for t in g.logit_targets]], 1)
    row_nodes = np.r_[np.arange(F), np.arange(len(labels) - K, len(labels))]
    return {"labels": labels, "row_nodes": row_nodes, "rows": g.adjacency_matrix[row_nodes].numpy(),
            "active": g.active_features.numpy(), "active_values": g.activation_values.float().numpy(),
            "logit_probs": g.logit_probabilities.float().numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="transformers checkpoint folder (LlamaForCausalLM)")
    ap.add_argument("--transcoders", required=True, help="folder of converted transcoders (config.yaml)")
    ap.add_argument("--tokens", required=True, help=".npy of the prompt's token ids [T]")
    ap.add_argument("--special-ids", required=True, help="the model's BOS, EOS and pad ids: 1,2,2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--max-logits", type=int, default=10)
    ap.add_argument("--logit-prob", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    from circuit_tracer import ReplacementModel, attribute

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tcs = load_transcoders(Path(args.transcoders))
    rm = ReplacementModel.from_pretrained_and_transcoders(args.model, tcs, backend="nnsight",
                                                          device=torch.device("cpu"), dtype=torch.float32)
    rm.tokenizer = model_tokenizer(args.model, *map(int, args.special_ids.split(",")))
    load_s = time.perf_counter() - t0
    loaded_gb = rss_gb()
    # position 0 carries the BOS the driver put there, a special token of that tokenizer: circuit-tracer keeps it
    ids = torch.from_numpy(np.load(args.tokens).astype(np.int64))
    if rm.ensure_tokenized(ids).shape != ids.shape:
        raise RuntimeError(f"circuit-tracer would prepend a token to the prompt (its first token is {int(ids[0])})")
    times, g = [], None
    for _ in range(args.calls):
        t0 = time.perf_counter()
        g = attribute(ids, rm, max_n_logits=args.max_logits, desired_logit_prob=args.logit_prob,
                      batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes, offload=None,
                      verbose=False)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    np.savez(args.out, **graph_arrays(g))
    print(json.dumps({"times_s": times, "load_s": load_s, "loaded_rss_gb": loaded_gb, "peak_rss_gb": peak,
                      "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                      "n_active": int(g.active_features.shape[0]), "n_selected": int(len(g.selected_features)),
                      "versions": {p: metadata.version(p) for p in PACKAGES}}))


if __name__ == "__main__":
    main()
