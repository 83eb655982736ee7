"""Set training (per-layer, skip and cross-layer transcoders) checkpoints and resumes exactly, and refuses to resume
another run's checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from interp.sae import CrossLayerTranscoder, Transcoders, train_clt, train_transcoders
from tests.conftest import random_tokens

STEPS = 10  # 8 contexts of 15 trained positions a step


def train(kind, model, corpus, out_dir, **kw):
    common = dict(width=32, k=4, total_tokens=STEPS * 8 * 15, corpus=corpus, context_size=16, model_batch=8,
                  lr=1e-3, out_dir=out_dir, progress=False, checkpoint_every=3)
    common.update(kw)
    if kind == "clt":
        return train_clt(model, **common)
    return train_transcoders(model, skip=kind == "skip", **common)


def leaves(tc):
    return [np.asarray(a) for a in jax.tree.leaves(tc)]


def kill_at(step):
    def callback(done, fvu):
        assert len(fvu) == 3 and all(np.isfinite(fvu))
        if done == step:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("kind", ["transcoders", "skip", "clt"])
def test_a_killed_run_resumes_to_what_an_uninterrupted_run_trains(kind, tiny3, tmp_path):
    corpus = random_tokens(tiny3.d_vocab, (24, 16), seed=5)
    full, full_summary = train(kind, tiny3, corpus, tmp_path / "full", checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        train(kind, tiny3, corpus, tmp_path / "part", callback=kill_at(8))
    # checkpoints at steps 3 and 6 (two are kept); the step-8 state was never written
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    with pytest.raises(FileExistsError, match="resume"):
        train(kind, tiny3, corpus, tmp_path / "part")
    with pytest.raises(ValueError, match=r"different settings.*lr: checkpoint 0\.001, now 0\.005"):
        train(kind, tiny3, corpus, tmp_path / "part", resume=True, lr=5e-3)
    with pytest.raises(ValueError, match=r"corpus \(the data, not its location\): checkpoint token ids"):
        train(kind, tiny3, corpus[::-1].copy(), tmp_path / "part", resume=True)
    resumed, summary = train(kind, tiny3, corpus, tmp_path / "part", resume=True)
    for a, b in zip(leaves(full), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert summary == full_summary
    # the finished set replaced the checkpoints, and reads back
    assert not (tmp_path / "part" / "checkpoints").exists()
    back = (CrossLayerTranscoder if kind == "clt" else Transcoders).load(tmp_path / "part")
    for a, b in zip(leaves(back), leaves(resumed)):
        np.testing.assert_allclose(a, b)
    with pytest.raises(FileNotFoundError, match="holds a finished set"):
        train(kind, tiny3, corpus, tmp_path / "part", resume=True)


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(tiny3, tmp_path):
    corpus = random_tokens(tiny3.d_vocab, (24, 16), seed=6)
    full, _ = train("transcoders", tiny3, corpus, tmp_path / "full", checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        train("transcoders", tiny3, corpus, tmp_path / "part", callback=kill_at(7))
    state = tmp_path / "part" / "checkpoints" / "step-00000006" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-100])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match=r"step-00000006 \(state.safetensors does not match its sha256"):
        resumed, _ = train("transcoders", tiny3, corpus, tmp_path / "part", resume=True)
    for a, b in zip(leaves(full), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train("transcoders", tiny3, corpus, tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        train("transcoders", tiny3, corpus, None, resume=True)
