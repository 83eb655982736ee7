"""Attribution graphs over per-layer transcoders or a cross-layer transcoder (circuit tracing as in Ameisen et
al., 2025).

The *replacement model* is the model with each MLP replaced by a transcoder that reads the MLP's normalised
input (``blocks.{l}.ln2.hook_normalized``) and writes its output (``blocks.{l}.hook_mlp_out``), with every
attention pattern and normalisation scale frozen at its value on the traced prompt, and an *error node* per
layer and position holding what the transcoder misses. With skip transcoders the skip term ``x W_skip`` is part
of the frozen linear model (it reads the live stream). With a cross-layer transcoder
(:class:`interp.sae.CrossLayerTranscoder`) a feature read at layer l writes to every MLP output from l on, so it
is one node with direct edges into every later layer. With those frozen, the residual stream is a linear
function of what is written into it: token embeddings, active features (activation x decoder row) and error
nodes. So the direct effect of one node on another is exact and computed with vector-Jacobian products:
the gradient of a target (a feature's pre-activation, or a logit minus the mean logit) with respect to every
write, dotted with each source's write. Targets are processed in batches under ``jit``, so memory stays bounded
by ``batch_size`` whatever the prompt length.

Node order in a :class:`Graph`: features, then error nodes (layer-major, ``[L, T]``), then token embeddings
(``[T]``), then logits. ``adjacency[t, s]`` is the direct effect of node ``s`` on node ``t``.

Axis letters: B batch, T position, D model, V vocabulary, L layers; in a graph F feature nodes, K logit nodes,
N nodes of every kind.

One job per module: :mod:`._replacement` (the frozen linear model), :mod:`._trace` (:func:`trace`),
:mod:`._data` (:class:`Graph`, its influence and its files), :mod:`._prune` (:func:`prune`,
:func:`auto_supernodes`) and :mod:`._interventions` (:func:`intervene`, :func:`feature_changes`).
"""

# the private helpers (``as`` marks a re-export) are importable from here for the tests that check the replacement
# model and influence directly
from interp.circuits.graph._data import Graph
from interp.circuits.graph._data import _influence as _influence
from interp.circuits.graph._data import _normalize as _normalize
from interp.circuits.graph._interventions import Intervention, feature_changes, intervene
from interp.circuits.graph._prune import auto_supernodes, prune
from interp.circuits.graph._replacement import _frozen_names as _frozen_names
from interp.circuits.graph._replacement import frozen_forward
from interp.circuits.graph._trace import trace
from interp.sae.clt import CrossLayerTranscoder
from interp.sae.transcoders import HOOK_IN, HOOK_OUT, Transcoders

__all__ = ["HOOK_IN", "HOOK_OUT", "CrossLayerTranscoder", "Graph", "Intervention", "Transcoders", "auto_supernodes",
           "feature_changes", "frozen_forward", "intervene", "prune", "trace"]
