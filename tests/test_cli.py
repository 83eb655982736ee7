"""The main job: ``interp demo`` on the packaged default."""

import io

from interp.cli import demo, main


def test_demo_prints_predictions_and_logit_lens(default_model):
    out = io.StringIO()
    demo(prompts=("The capital of France is",), out=out)
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
