"""Toy models trained from scratch, and two experiments that made circuits famous: induction heads forming in a
two-layer attention-only transformer (:mod:`interp.toys.induction`), and grokking of modular addition with its
Fourier circuit (:mod:`interp.toys.modular`).

    >>> from interp import toys
    >>> from interp.toys import induction
    >>> words = induction.tokenize(text, 512)
    >>> model = toys.transformer(toys.ToyConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_ctx=64))
    >>> model, history = toys.train(model, induction.text_batches(words, batch=32, length=64), steps=1500, lr=1e-2)
"""

from interp.toys import induction, modular
from interp.toys.model import ToyConfig, transformer
from interp.toys.train import History, next_token_loss, train

__all__ = ["History", "ToyConfig", "induction", "modular", "next_token_loss", "train", "transformer"]
