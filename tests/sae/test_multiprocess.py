"""Dictionary training over two processes on this machine (``interp.distributed``, CPU collectives over Gloo, two
host devices each): the same dictionary as one process trains on the same activations, checkpoints written once by
the first process, and a two-process run resumed by a single process ends where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from interp import sae
from tests.sae.test_training import gaussian_acts

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH = 12, 256

WORKER = textwrap.dedent("""
    import sys, json
    import interp.distributed
    port, pid, out, lp = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    interp.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import jax
    from interp import sae
    from tests.sae.test_multiprocess import BATCH, config
    from tests.sae.test_training import gaussian_acts
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    res = sae.train(config(out, latent_parallel=lp), store=sae.ArrayActivationStore(gaussian_acts(seed=4),
                    batch_size=BATCH), progress=False)
    print("DONE", pid, json.dumps(res.history[-1]["loss"]))
""")


def config(out, **kw):
    return sae.TrainConfig(sae.TopKConfig(d_in=16, width=64, k=4), total_tokens=BATCH * STEPS, batch_size=BATCH,
                           lr=1e-3, lr_warmup_steps=1, seed=5, out_dir=str(out), checkpoint_every=4,
                           keep_checkpoints=10, eval_every=4, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(out: Path, latent_parallel: int = 1) -> list[str]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(pid), str(out), str(latent_parallel)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    return finish(procs)


def finish(procs) -> list[str]:
    """Wait for every process and return their stdouts; a failure shows each process's own error, since when one
    fails the others only report that they waited for it."""
    try:
        outs, errs = zip(*(p.communicate(timeout=600) for p in procs))
        assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(
            f"process {i}: {e[-3000:]}" for i, e in enumerate(errs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return list(outs)


def leaves(d):
    return [np.asarray(a) for a in jax.tree.leaves(d) if hasattr(a, "shape")]


@pytest.mark.parametrize("latent_parallel", [1, 2])
def test_two_processes_train_what_one_does_and_one_resumes_their_run(latent_parallel, tmp_path):
    one = sae.train(config(tmp_path / "one"), store=sae.ArrayActivationStore(gaussian_acts(seed=4), batch_size=BATCH),
                    progress=False)
    outs = two_processes(tmp_path / "two", latent_parallel)
    assert all("DONE" in o for o in outs)
    two = sae.load(tmp_path / "two" / "final")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(leaves(one.dictionary), leaves(two)))
    assert diff < 1e-4, diff
    # the first process alone wrote the checkpoints, each with the layout it was made on
    steps = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert steps == [f"step-{s:08d}" for s in (4, 8, 12)]
    meta = json.loads((tmp_path / "two" / "checkpoints" / "step-00000004" / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["step"] == 4
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [h["step"] for h in history] == [4, 8, 12]
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in one.history], rtol=1e-4)

    # one process resumes the two-process run from its step-4 checkpoint and ends where the uninterrupted run does
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "two", cut)
    for name in ("step-00000008", "step-00000012"):
        shutil.rmtree(cut / "checkpoints" / name)
    shutil.rmtree(cut / "final")
    resumed = sae.train(config(cut), store=sae.ArrayActivationStore(gaussian_acts(seed=4), batch_size=BATCH),
                        resume=True, progress=False)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(leaves(one.dictionary), leaves(resumed.dictionary)))
    assert diff < 1e-4, diff


def test_multiprocess_run_refuses_to_harvest_in_every_process(monkeypatch):
    from interp.sae import trainer

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=16, width=64, k=4, hook_name="blocks.0.hook_resid_post"),
                          total_tokens=BATCH * 2, batch_size=BATCH, model="smollm2-135m")
    with pytest.raises(ValueError, match="an activation cache .* harvesting them from the model in every process "
                                         "would repeat its forward passes 2 times"):
        trainer.train(cfg, progress=False)


def test_command_line_run_over_two_processes_reads_an_activation_cache(tmp_path):
    """``interp train-sae --coordinator ... --process-id i`` in two processes writes what one process writes."""
    from tests.reliability.test_training_runs import write_activation_cache

    cache = write_activation_cache(tmp_path / "acts", gaussian_acts(seed=11))
    args = ["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--width", "32",
            "--k", "4", "--tokens", str(64 * 10), "--batch-size", "64", "--lr-warmup-steps", "1", "--no-progress"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "interp", *args, "--out", str(tmp_path / "two"), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    finish(procs)
    one = subprocess.run([sys.executable, "-m", "interp", *args, "--out", str(tmp_path / "one")], cwd=ROOT,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = sae.load(tmp_path / "one" / "final"), sae.load(tmp_path / "two" / "final")
    assert max(float(np.abs(x - y).max()) for x, y in zip(leaves(a), leaves(b))) < 1e-4
