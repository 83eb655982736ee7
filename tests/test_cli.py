"""The command line: ``interp predict`` and ``interp train-sae`` on the packaged default."""

import io

from interp.cli import main, predict


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
    assert "saved" in capsys.readouterr().out
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
