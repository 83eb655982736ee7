"""``interp audit`` through its parser: a model audited against itself (nothing planted) is not flagged, and the JSON
and report are written."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from interp.audit import cli
from tests.tiny_chat import tiny_chat_folder


def parse(argv):
    p = argparse.ArgumentParser(prog="interp")
    cli.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_audit_of_a_model_against_itself(tmp_path):
    folder = tiny_chat_folder(tmp_path / "tiny")
    args = parse(["audit", "--model", str(folder), "--base", str(folder), "--budget", "small", "--out",
                  str(tmp_path / "a.json"), "--report", str(tmp_path / "a.html"), "--no-progress"])
    out = io.StringIO()
    assert cli.main(args, out) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["flagged"] is False
    # identical models: no candidate raises the behaviour more in one than in the other
    assert data["trigger_candidates"] and all(c["effect"] <= 1e-9 for c in data["trigger_candidates"])
    assert data["behaviour_diff"]["reply"]["kl_max"] < 1e-6
    assert (tmp_path / "a.html").read_text().startswith("<!DOCTYPE html>")
    assert "flagged: False" in out.getvalue()


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        parse(["audit", "--model", "x", "--budget", "huge"])
    folder = tiny_chat_folder(tmp_path / "tiny")
    other = tiny_chat_folder(tmp_path / "other", d_model=32)
    args = parse(["audit", "--model", str(folder), "--base", str(other), "--no-progress"])
    with pytest.raises(SystemExit, match="configuration differs"):
        cli.main(args, io.StringIO())
