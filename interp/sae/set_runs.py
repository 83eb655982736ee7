"""Checkpoints of the runs that train a whole set of dictionaries from one forward pass per batch
(:func:`interp.sae.train_transcoders`, :func:`interp.sae.train_clt`).

Every ``checkpoint_every`` steps the run's state (parameters, optimiser state, the metric window) is written
atomically to ``out_dir/checkpoints/step-NNNNNNNN``, in the format and with the checksums of
:mod:`interp.sae.checkpoints`; ``resume=True`` continues the newest one that verifies and ends where an
uninterrupted run ends. A checkpoint records what makes the run: its settings, the model's weights (a content
hash) and its text; resuming with anything else is refused with the differences named. When the finished set is
written to ``out_dir`` it replaces the checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from interp.sae.checkpoints import (
    _differences,
    _fingerprint,
    checkpoint_dirs,
    find_checkpoint,
    load_checkpoint,
    prepare_out_dir,
    save_checkpoint,
)


def corpus_identity(corpus) -> str:
    """What the run reads, wherever it lives: the built-in text, a file or folder by its content listing, token ids
    or a list of texts by a checksum of their content. Other iterables cannot be checked and say so."""
    if corpus is None:
        return "built-in text"
    if isinstance(corpus, (str, os.PathLike)):
        return _fingerprint(corpus)
    if isinstance(corpus, np.ndarray):
        a = np.ascontiguousarray(corpus)
        return f"token ids {a.dtype} {list(a.shape)} sha256 {hashlib.sha256(a.tobytes()).hexdigest()[:16]}"
    if isinstance(corpus, (list, tuple)) and all(isinstance(t, str) for t in corpus):
        h = hashlib.sha256()
        for t in corpus:
            h.update(t.encode())
            h.update(b"\0")
        return f"{len(corpus)} texts sha256 {h.hexdigest()[:16]}"
    return f"{type(corpus).__name__} (not checkable)"


def set_identity(settings: dict, model, corpus) -> dict:
    """What makes a set-training run: its settings, the model's weights (by content hash) and its text."""
    from interp.weights.fingerprint import weights_hash

    return {**settings, "model": weights_hash(model), "corpus": corpus_identity(corpus)}


class SetRun:
    """The checkpoint side of one set-training run. ``identity`` is called (once, only when a checkpoint is written
    or read) for the dict that makes the run; ``keep``: how many of the newest checkpoints stay."""

    def __init__(self, out_dir, *, identity: Callable[[], dict], checkpoint_every: int = 0, resume: bool = False,
                 keep: int = 2):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir: the folder of the run to continue")
        if checkpoint_every and self.out_dir is None:
            raise ValueError("checkpoint_every needs out_dir: the folder the checkpoints are written to")
        self.every, self.resume, self.keep = checkpoint_every, resume, keep
        self._identity_fn, self._identity = identity, None
        self.last: Path | None = None  # the newest checkpoint written or resumed from
        if self.out_dir is not None and (checkpoint_every or resume):
            prepare_out_dir(self.out_dir)
            if not resume and checkpoint_dirs(self.out_dir):
                raise FileExistsError(f"{self.out_dir} already holds checkpoints of a run; pass resume=True "
                                      "(--resume) to continue it, or another out_dir")

    @property
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = json.loads(json.dumps(self._identity_fn()))
        return self._identity

    def start(self, template):
        """None for a fresh run; resuming, the newest checkpoint that verifies as ``(state, meta)``, ``state`` shaped
        like ``template``."""
        if not self.resume:
            return None
        ckpt, skipped = find_checkpoint(self.out_dir)
        if ckpt is None and skipped:
            raise ValueError(f"no intact checkpoint to resume under {self.out_dir / 'checkpoints'}: "
                             f"{'; '.join(skipped)}. Remove {self.out_dir / 'checkpoints'} to start the run over")
        if ckpt is None:
            done = any((self.out_dir / name).is_file() for name in ("transcoders.json", "clt.json"))
            raise FileNotFoundError(f"nothing to resume: no checkpoint under {self.out_dir / 'checkpoints'}"
                                    + (f" ({self.out_dir} holds a finished set)" if done else ""))
        saved = json.loads((ckpt / "meta.json").read_text()).get("identity", {})
        diffs = _differences(saved, self.identity)
        if diffs:
            raise ValueError(f"resume with different settings than the checkpoint {ckpt}: {'; '.join(diffs)}. "
                             "Resume with the checkpoint's settings, or start a new run in another out_dir")
        if skipped:
            warnings.warn(f"skipped checkpoints that fail verification: {'; '.join(skipped)}; resuming from {ckpt}",
                          stacklevel=3)
        self.last = ckpt
        return load_checkpoint(ckpt, template)

    def after_step(self, done: int, total: int, state, meta: Callable[[], dict]) -> None:
        """After ``done`` of ``total`` steps: write a checkpoint when one is due (not after the last step, which
        writes the finished set instead)."""
        if not self.every or done % self.every or done >= total:
            return
        folder = self.out_dir / "checkpoints" / f"step-{done:08d}"
        save_checkpoint(folder, state, {"step": done, "identity": self.identity, **meta()})
        self.last = folder
        for old in checkpoint_dirs(self.out_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def where(self) -> str:
        """Where the run can be resumed from, for error messages."""
        if self.last is None:
            return "no checkpoint was written" + ("" if self.every else " (checkpoint_every=0)")
        return f"the last intact checkpoint is {self.last} (resume=True continues it)"
