"""``interp search`` end to end on a tiny model saved to a folder, and its errors."""

from __future__ import annotations

import json

import jax
import pytest

from interp import sae
from interp.cli import main


def test_search_logprob_writes_the_result(char_folder, tmp_path, capsys):
    out = tmp_path / "runs" / "result.json"
    assert main(["search", "--model", str(char_folder), "--target", "!", "--prompt", "Hi", "--span", "suffix:3",
                 "--steps", "3", "--batch", "16", "--topk", "8", "--seed", "1", "--no-progress",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["search"]["objective"] == "logprob" and record["search"]["target"] == "!"
    assert len(record["tokens"]) == 3 and record["input_text"] == "Hi" + record["text"]
    assert len(record["history"][0]) == record["steps"] <= 3
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]  # no partial file left beside it
    assert "GCG search: log-probability of '!'" in capsys.readouterr().out


def test_search_latent(char_folder, tmp_path):
    d = sae.create(sae.TopKConfig(d_in=32, width=16, k=4, hook_name="blocks.0.hook_resid_post"), jax.random.key(1))
    sae.save(d, tmp_path / "sae")
    out = tmp_path / "latent.json"
    main(["search", "--model", str(char_folder), "--objective", "latent", "--sae", str(tmp_path / "sae"),
          "--latent", "2", "--span", "prefix:4", "--prompt", "ok", "--steps", "2", "--batch", "8", "--topk", "4",
          "--no-progress", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["search"]["latent"] == 2 and record["input_text"] == record["text"] + "ok"
    assert record["search"]["objective"] == "latent"
    assert record["description"].startswith("latent 2 of blocks.0.hook_resid_post")


@pytest.mark.parametrize("args, message", [
    (["--objective", "logprobz", "--target", "!"], "unknown objective 'logprobz'; did you mean 'logprob'"),
    (["--objective", "score"], "Python-only objective"),
    ([], "needs --target"),
    (["--objective", "latent"], "needs --sae DIR"),
    (["--target", ""], "tokenizes to no tokens"),
    (["--target", "!", "--span", "suffix:500"], "more than this model's context"),
    (["--target", "!", "--span", "tail:5"], "write KIND:N"),
])
def test_search_errors(char_folder, args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", str(char_folder), "--no-progress", "--steps", "1", *args])
    assert message in str(e.value) and str(e.value).startswith("interp search: ")
