"""The command line: ``interp predict`` and ``interp train-sae`` on the packaged default."""

import argparse
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from interp.cli import build_parser, main, predict


def test_predict_prints_predictions_and_logit_lens(default_model):
    out = io.StringIO()
    predict(prompts=("The capital of France is",), out=out)
    text = out.getvalue()
    lines = text.splitlines()
    first = next(l for l in lines if l.strip().startswith("0."))
    assert "' Paris'" in first  # the top prediction
    rows = [l for l in lines if l.strip().startswith(("embed", "block"))]
    assert len(rows) == 1 + default_model.n_layers
    assert rows[-1].split()[-1] == "0"  # the last block's lens is the model's answer: rank 0


def test_cli_rejects_unknown_command(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_train_sae_command_trains_resumes_and_saves(default_model, tmp_path, corpus_text, capsys):
    import json

    import pytest

    from interp import sae

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text[:30000])
    out = tmp_path / "run"
    args = ["train-sae", "--hook", "blocks.1.hook_resid_post", "--arch", "topk", "--k", "8", "--width", "128",
            "--tokens", "2048", "--batch-size", "256", "--context-size", "32", "--buffer-tokens", "1024",
            "--checkpoint-every", "4", "--corpus", str(corpus), "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "saved" in captured.out
    # feedback from the start: the model loading, then harvesting (32 contexts of 31 kept positions per chunk, 3
    # chunks for 8 steps of 256), then the steps
    err = captured.err
    assert err.index("loading smollm2-135m") < err.index("harvest activations") < err.index("train topk 128")
    assert "2.98k/2.98k" in err and "8/8" in err
    d = sae.load(out / "final")
    assert d.cfg.k == 8 and d.cfg.width == 128 and d.cfg.hook_name == "blocks.1.hook_resid_post"
    assert json.loads((out / "history.json").read_text())[-1]["step"] == 8
    with pytest.raises(SystemExit, match="resume"):
        main(args)
    with pytest.raises(SystemExit, match="unknown hook 'blocks.1.hook_resid'"):
        main(args[:2] + ["blocks.1.hook_resid"] + args[3:-1] + [str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="k=128 must be between"):
        main(["train-sae", "--hook", "blocks.1.hook_resid_post", "--k", "128", "--width", "128",
              "--out", str(tmp_path / "y"), "--corpus", str(corpus)])


def option_help(text: str) -> dict[str, str]:
    """``--help`` output as option -> its help text (the lines under it joined)."""
    blocks, current = {}, None
    for line in text.splitlines():
        m = re.match(r"  (-\S+)", line)
        if m:
            current = m.group(1).rstrip(",")
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {k: re.sub(r"\s+", " ", v) for k, v in blocks.items()}


def test_train_sae_help_shows_every_default(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["train-sae", "--help"])
    assert e.value.code == 0
    blocks = option_help(capsys.readouterr().out)
    for option, default in [("--width", "4096"), ("--k", "32"), ("--tokens", "2000000"), ("--lr", "0.0002"),
                            ("--context-size", "128"), ("--buffer-tokens", "65536"), ("--arch", "topk"),
                            ("--checkpoint-every", "100"), ("--model", "smollm2-135m"), ("--progress", "True")]:
        assert f"(default: {default})" in blocks[option], blocks[option]
    assert "(default: from --tokens: the largest power of two giving at least 200 steps" in blocks["--batch-size"]
    assert "(default: an eighth of the steps, at most 50)" in blocks["--lr-warmup-steps"]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train-sae"]
    for action in sub._actions:
        option = action.option_strings[-1] if action.option_strings else None
        if option in (None, "--help") or action.required or action.default is False:
            continue
        assert "default" in blocks[action.option_strings[0]], f"{option} does not say its default"


def test_no_progress_silences_the_bars(tmp_path, capsys):
    import numpy as np

    from tests.reliability.test_training_runs import write_activation_cache
    from tests.sae.test_training import gaussian_acts

    cache = write_activation_cache(tmp_path / "acts", gaussian_acts(seed=11))
    args = ["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", str(cache), "--width", "32",
            "--k", "4", "--tokens", str(64 * 10), "--batch-size", "64", "--lr-warmup-steps", "1"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr()
    assert "train topk 32" in shown.err and "10/10" in shown.err
    assert "harvest" not in shown.err  # cached activations are read, not harvested
    assert main(args + ["--out", str(tmp_path / "b"), "--no-progress"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.split(": ", 1)[1] == shown.out.split(": ", 1)[1]
    assert np.isfinite(json.loads((tmp_path / "b" / "history.json").read_text())[-1]["fvu"])


def test_a_short_run_warns_on_stderr_as_the_command(tmp_path):
    """Outside pytest's warning capture: the warning is one line that names the command, the numbers and the fix."""
    from tests.reliability.test_training_runs import write_activation_cache
    from tests.sae.test_training import gaussian_acts

    cache = write_activation_cache(tmp_path / "acts", gaussian_acts(seed=11))
    root = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import sys
        from interp.cli import main
        sys.exit(main(["train-sae", "--hook", "blocks.0.hook_resid_post", "--activation-cache", {str(cache)!r},
                       "--width", "32", "--k", "4", "--tokens", "640", "--batch-size", "64",
                       "--lr-warmup-steps", "20", "--out", {str(tmp_path / "run")!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    [warning] = [line for line in lines if "warning:" in line]
    assert warning.startswith("interp train-sae: warning: the run is 10 steps (total_tokens=640 / batch_size=64)")
    assert "lr_warmup_steps=20" in warning and "Fix: " in warning and "lower lr_warmup_steps to at most 8" in warning
    assert "train topk 32" in done.stderr and "10/10" in done.stderr
