"""Training runs never lose work: the output folder is checked before the first step, corrupt checkpoints are
detected and skipped, interrupted writes are cleaned up, run folders can move, and a resumed run reports
exactly what an uninterrupted one does."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from interp import sae
from interp.cli import main
from tests.sae.test_training import gaussian_acts

STEPS = 12


def cfg_for(out_dir=None, **kw):
    # eval_every does not divide checkpoint_every, so a checkpoint falls inside a metric window
    base = dict(total_tokens=256 * STEPS, batch_size=256, lr=1e-3, lr_warmup_steps=2, eval_every=3, seed=3,
                out_dir=str(out_dir) if out_dir else None, checkpoint_every=4, keep_checkpoints=3,
                dead_after_tokens=1024)
    base.update(kw)
    return sae.TrainConfig(sae.TopKConfig(d_in=16, width=64, k=4), **base)


def store_for(x):
    return sae.ArrayActivationStore(x, batch_size=256, chunk_size=1024)


def stop_at(n):
    def callback(step, metrics, d):
        if step == n:
            raise KeyboardInterrupt

    return callback


def interrupted(out_dir, x, at=10, **kw):
    """A run killed after step ``at`` (checkpoints at 4 and 8)."""
    with pytest.raises(KeyboardInterrupt):
        sae.train(cfg_for(out_dir, **kw), store=store_for(x), progress=False, callback=stop_at(at))


def without_clock(history):
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in history]


def assert_same_run(a, b):
    for p, q in zip(jax.tree.leaves(a.dictionary), jax.tree.leaves(b.dictionary)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    assert without_clock(a.history) == without_clock(b.history)


@pytest.fixture(scope="module")
def acts():
    return gaussian_acts(seed=11)


@pytest.fixture(scope="module")
def uninterrupted(acts, tmp_path_factory):
    return sae.train(cfg_for(tmp_path_factory.mktemp("full")), store=store_for(acts), progress=False)


def write_activation_cache(folder, x, context_size=16):
    """A cache in the layout ``cache_activations`` writes, without running a model."""
    from safetensors.numpy import save_file

    chunk = 1024
    n = len(x) // chunk
    for i in range(n):
        shard = folder / f"shard-{i:05d}"
        shard.mkdir(parents=True)
        save_file({"a0": np.ascontiguousarray(x[i * chunk:(i + 1) * chunk])}, str(shard / "acts.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({
        "hooks": ["blocks.0.hook_resid_post"], "context_size": context_size, "skipped_positions": 0,
        "chunk_size": chunk, "n_chunks": n, "d": [x.shape[1]]}))
    return folder


# ----------------------------------------------------------------------------- the output folder


def test_an_unwritable_output_folder_fails_before_the_first_step(acts, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    steps = []
    for out, why in [(a_file, "is a file"), (a_file / "run", "is a file")]:
        with pytest.raises(OSError, match=f"cannot write the output folder {re.escape(str(out))}.*{why}.*out_dir"):
            sae.train(cfg_for(out), store=store_for(acts), progress=False,
                      callback=lambda step, m, d: steps.append(step))
    assert steps == []
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_output_folder_fails_before_the_first_step(acts, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    steps = []
    try:
        with pytest.raises(PermissionError, match="cannot write the output folder"):
            sae.train(cfg_for(ro / "run"), store=store_for(acts), progress=False,
                      callback=lambda step, m, d: steps.append(step))
    finally:
        ro.chmod(0o700)
    assert steps == []


def test_cli_refuses_an_output_file_before_training(acts, tmp_path, capsys):
    cache = write_activation_cache(tmp_path / "acts", acts)
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(SystemExit, match=f"interp train-sae: cannot write the output folder {re.escape(str(taken))}"
                                         ".*is a file"):
        main(["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--width", "32",
              "--k", "4", "--tokens", "2560", "--batch-size", "256", "--out", str(taken)])
    assert "saved" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- corrupt checkpoints


def test_checkpoints_carry_the_checksum_of_their_state(acts, uninterrupted):
    ckpt = uninterrupted.out_dir / "checkpoints" / "step-00000008"
    meta = json.loads((ckpt / "meta.json").read_text())
    digest = hashlib.sha256((ckpt / "state.safetensors").read_bytes()).hexdigest()
    assert meta["sha256"]["state.safetensors"] == digest


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path, at=-100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def flip_meta_step(path):
    path.write_text(path.read_text().replace('"step": 8', '"step": 9'))


@pytest.mark.parametrize("damage,why", [
    (lambda c: truncate(c / "state.safetensors"), "state.safetensors does not match its sha256"),
    (lambda c: flip_byte(c / "state.safetensors"), "state.safetensors does not match its sha256"),
    (lambda c: flip_meta_step(c / "meta.json"), "meta.json does not match its sha256"),
    (lambda c: (c / "meta.json").write_text("{"), "meta.json is not valid JSON"),
    (lambda c: (c / "state.safetensors").unlink(), "state.safetensors is missing"),
])
def test_resume_skips_a_corrupt_checkpoint_and_says_so(acts, uninterrupted, tmp_path, damage, why):
    interrupted(tmp_path, acts)
    damage(tmp_path / "checkpoints" / "step-00000008")
    with pytest.warns(UserWarning, match=rf"step-00000008 \({why}.*resuming from .*step-00000004"):
        resumed = sae.train(cfg_for(tmp_path), store=store_for(acts), progress=False, resume=True)
    assert_same_run(uninterrupted, resumed)
    # the damaged checkpoint was overwritten by a good one when the run passed step 8 again
    meta = json.loads((tmp_path / "checkpoints" / "step-00000008" / "meta.json").read_text())
    assert meta["step"] == 8


LEGACY_META = ("step", "store", "scale", "history", "config")


def test_checkpoints_without_checksums_still_resume_and_a_truncated_one_is_skipped(acts, uninterrupted, tmp_path):
    interrupted(tmp_path, acts)
    for ckpt in (tmp_path / "checkpoints").iterdir():  # as checkpoints were written before they carried checksums
        meta = json.loads((ckpt / "meta.json").read_text())
        (ckpt / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k in LEGACY_META}))
    truncate(tmp_path / "checkpoints" / "step-00000008" / "state.safetensors")
    with pytest.warns(UserWarning, match=r"step-00000008 \(state.safetensors cannot be read.*resuming from "
                                         r".*step-00000004"):
        resumed = sae.train(cfg_for(tmp_path), store=store_for(acts), progress=False, resume=True)
    for p, q in zip(jax.tree.leaves(uninterrupted.dictionary), jax.tree.leaves(resumed.dictionary)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


def test_resume_without_any_intact_checkpoint_is_a_clear_error(acts, tmp_path):
    interrupted(tmp_path, acts)
    truncate(tmp_path / "checkpoints" / "step-00000008" / "state.safetensors")
    flip_byte(tmp_path / "checkpoints" / "step-00000004" / "state.safetensors")
    with pytest.raises(ValueError, match=r"no intact checkpoint to resume.*step-00000008 \(state.safetensors does "
                                         r"not match.*step-00000004 \(state.safetensors does not match.*"
                                         r"Remove .*checkpoints to start the run over"):
        sae.train(cfg_for(tmp_path), store=store_for(acts), progress=False, resume=True)


def test_divergence_names_the_last_checkpoint_that_verifies(tmp_path):
    x = gaussian_acts(seed=2)
    x[256 * 9: 256 * 10] = np.nan  # the 10th batch is poisoned

    def corrupt_latest(step, metrics, d):
        if step == 9:
            flip_byte(tmp_path / "checkpoints" / "step-00000008" / "state.safetensors")

    with pytest.raises(sae.TrainingDiverged, match=r"step 10.*step-00000004\) is intact"):
        sae.train(cfg_for(tmp_path), store=sae.ArrayActivationStore(x, batch_size=256, chunk_size=4096, seed=None),
                  progress=False, callback=corrupt_latest)


# ----------------------------------------------------------------------------- interrupted writes, moved runs


def test_leftovers_of_interrupted_writes_are_removed_on_the_next_start(acts, uninterrupted, tmp_path):
    run = tmp_path / "run"
    interrupted(run, acts)
    ckpts = run / "checkpoints"
    leftovers = [ckpts / ".step-00000012.partial-k2j3h4", run / ".final.partial-a8d9", run / ".history.json.partial-x1"]
    kept = [ckpts / "step-notes.partial-1", run / ".hidden", run / "notes.partial-2", tmp_path / ".run.partial-3",
            run / "final-ish" / ".x.partial-4"]
    for p in leftovers[:2] + kept[:1] + kept[3:]:
        p.mkdir(parents=True)
        (p / "state.safetensors").write_bytes(b"\0" * 1000)
    for p in leftovers[2:] + kept[1:3]:
        p.write_text("half")
    resumed = sae.train(cfg_for(run), store=store_for(acts), progress=False, resume=True)
    assert [p for p in leftovers if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert_same_run(uninterrupted, resumed)


def test_write_check_survives_another_process_cleaning_the_folder(monkeypatch, tmp_path):
    """Two processes starting one run in one folder: the first one's cleanup of write leftovers may remove the
    other's write probe between its write and its removal; the folder was writable all the same."""
    from pathlib import Path

    from interp.sae.checkpoints import prepare_out_dir

    write = Path.write_bytes

    def write_then_cleaned(self, data):
        n = write(self, data)
        for leftover in self.parent.glob(".*.partial-*"):  # what another process's prepare_out_dir removes
            leftover.unlink()
        return n

    monkeypatch.setattr(Path, "write_bytes", write_then_cleaned)
    prepare_out_dir(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_a_copied_run_folder_resumes(acts, uninterrupted, tmp_path):
    interrupted(tmp_path / "a", acts)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    resumed = sae.train(cfg_for(tmp_path / "b"), store=store_for(acts), progress=False, resume=True)
    assert_same_run(uninterrupted, resumed)


def test_moved_activation_cache_resumes_but_other_data_does_not(acts, tmp_path):
    cache = write_activation_cache(tmp_path / "acts", acts)

    def cfg(out, where):
        return cfg_for(out, activation_cache=str(where), batch_size=64, total_tokens=64 * STEPS)

    full = sae.train(cfg(tmp_path / "full", cache), progress=False)
    with pytest.raises(KeyboardInterrupt):
        sae.train(cfg(tmp_path / "part", cache), progress=False, callback=stop_at(6))
    moved = tmp_path / "elsewhere" / "acts-renamed"
    moved.parent.mkdir()
    cache.rename(moved)
    assert_same_run(full, sae.train(cfg(tmp_path / "part", moved), progress=False, resume=True))
    other = write_activation_cache(tmp_path / "other", acts[:2048])
    with pytest.raises(ValueError, match=r"activation_cache \(the data, not its location\): checkpoint 5 files, "
                                         r"\d+ bytes.*now 3 files"):
        sae.train(cfg(tmp_path / "part", other), progress=False, resume=True)


def test_a_config_mismatch_names_each_field_with_both_values(acts, tmp_path):
    interrupted(tmp_path, acts)
    changed = dataclasses.replace(cfg_for(tmp_path, lr=5e-3), dictionary=sae.TopKConfig(d_in=16, width=64, k=8))
    with pytest.raises(ValueError, match=r"different config.*: dictionary\.k: checkpoint 4, now 8; "
                                         r"lr: checkpoint 0\.001, now 0\.005\. Resume with") as e:
        sae.train(changed, store=store_for(acts), progress=False, resume=True)
    assert "eval_every" not in str(e.value)


# ----------------------------------------------------------------------------- the report after a resume


def test_resumed_run_reports_the_same_history_as_an_uninterrupted_one(acts, uninterrupted, tmp_path):
    interrupted(tmp_path, acts, at=7)  # killed inside the window that step 4's checkpoint cut in two
    resumed = sae.train(cfg_for(tmp_path), store=store_for(acts), progress=False, resume=True)
    assert_same_run(uninterrupted, resumed)
    assert [row["step"] for row in resumed.history] == [3, 6, 9, 12]
    full_dir = uninterrupted.out_dir
    assert without_clock(json.loads((tmp_path / "history.json").read_text())) == \
        without_clock(json.loads((full_dir / "history.json").read_text()))
    clock = [row["elapsed_s"] for row in resumed.history]
    assert clock == sorted(clock)  # the clock continues from the checkpoint instead of restarting


def test_cli_resume_of_a_copied_run_prints_the_same_report(acts, tmp_path, capsys):
    cache = write_activation_cache(tmp_path / "acts", acts)
    args = ["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--width", "32",
            "--k", "4", "--tokens", str(64 * 10), "--batch-size", "64", "--checkpoint-every", "3", "--lr", "1e-3"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    full = capsys.readouterr().out.split(": ", 1)[1]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000010")  # as if killed between steps 9 and 10
    assert main(args + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == full
