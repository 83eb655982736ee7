"""Sparse dictionaries: SAEs and transcoders, trained on activations streamed from the hooked model.

    >>> from interp import sae
    >>> cfg = sae.TrainConfig(sae.TopKConfig(d_in=576, width=4096, k=32, hook_name="blocks.15.hook_resid_post"))
    >>> result = sae.train(cfg)
    >>> d = sae.load(result.out_dir / "final")     # SAELens layout
    >>> d = sae.from_pretrained("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")

An architecture is one file registered in ``REGISTRY`` (see ``interp.sae._base``): files, the command line and the
trainer read what they need from its classes.
"""

from interp.sae import scaling
from interp.sae._base import (
    REGISTRY,
    AuxLoss,
    DictConfig,
    Dictionary,
    LossContext,
    Option,
    SAELensLayout,
    architecture,
    create,
    register,
    unregister,
)
from interp.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from interp.sae.clt import CLTLayer, CrossLayerTranscoder, train_clt
from interp.sae.crosscoder import (
    Crosscoder,
    CrosscoderConfig,
    CrosscoderDiff,
    crosscoder_acts,
    crosscoder_diff,
    evaluate_crosscoder,
    train_crosscoder,
)
from interp.sae.files import load, save
from interp.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from interp.sae.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from interp.sae.metrics import DictionaryMetrics, evaluate, reconstruction_metrics
from interp.sae.pretrained import PUBLISHED_HOOKS, fold_input_norm, from_pretrained
from interp.sae.standard import StandardConfig, StandardSAE
from interp.sae.store import (
    ActivationStore,
    ArrayActivationStore,
    CachedActivationStore,
    cache_activations,
    iter_contexts,
    iter_texts,
)
from interp.sae.topk import TopKConfig, TopKSAE
from interp.sae.trainer import TrainConfig, TrainingDiverged, TrainResult, metric_names, train
from interp.sae.transcoders import Transcoders, train_transcoders

__all__ = [
    "ActivationStore", "ArrayActivationStore", "AuxLoss", "BatchTopKConfig", "BatchTopKSAE", "CLTLayer",
    "CachedActivationStore", "CrossLayerTranscoder", "Crosscoder", "CrosscoderConfig", "CrosscoderDiff", "DictConfig",
    "Dictionary", "DictionaryMetrics", "JumpReLUConfig", "JumpReLUSAE", "LossContext", "MatryoshkaConfig",
    "MatryoshkaSAE", "Option", "PUBLISHED_HOOKS", "REGISTRY", "SAELensLayout", "StandardConfig", "StandardSAE",
    "TopKConfig", "TopKSAE", "TrainConfig", "TrainResult", "TrainingDiverged", "Transcoders", "architecture",
    "cache_activations", "create", "crosscoder_acts", "crosscoder_diff", "evaluate", "evaluate_crosscoder",
    "fold_input_norm", "from_pretrained", "iter_contexts", "iter_texts", "load", "metric_names",
    "reconstruction_metrics", "register", "save", "scaling", "train", "train_clt", "train_crosscoder",
    "train_transcoders", "unregister",
]
