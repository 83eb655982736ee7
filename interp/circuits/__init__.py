"""Circuit analysis on any hooked model: lenses (patching and attribution build on the same hooks API)."""

from interp.circuits.lens import LensResult, logit_lens

__all__ = ["LensResult", "logit_lens"]
