"""``interp explain`` on a planted dictionary (every latent an exact detector of known tokens at ``hook_embed``), so
the right explanation of each latent is known: the file it writes, ``--resume``, and the errors it gives before any
work (bad ``--latents``, ``--explainer``, ``--scorers``, a missing API key, an existing ``--out``)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import interp
from interp import sae
from interp.cli import latent_spec, main
from interp.explain import Reply, parse_pattern, planted_detectors, separable_groups
from interp.sae.store import iter_contexts

CONTEXTS, CONTEXT_SIZE = 64, 64
SECRET = "sk-test-explain-cli-5d1e0b"


@pytest.fixture(scope="module")
def planted(default_model, corpus_text, tmp_path_factory):
    """(dictionary folder, corpus file, token groups): latent i fires exactly on the token ids ``groups[i]``, chosen
    among tokens frequent in the contexts the command indexes."""
    root = tmp_path_factory.mktemp("explain_cli")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text[:60_000], encoding="utf-8")
    contexts = iter_contexts(default_model.tokenizer, str(corpus), CONTEXT_SIZE, cycle=False)
    tokens = np.stack([next(contexts) for _ in range(CONTEXTS)])
    groups = separable_groups(default_model, tokens, singles=6, pairs=2)
    assert [len(g) for g in groups] == [1] * 6 + [2] * 2
    folder = sae.save(planted_detectors(default_model, groups), root / "sae")
    return folder, corpus, groups


@pytest.fixture
def loads(monkeypatch, default_model):
    """``interp.load`` answering with the session's default model, counting the calls."""
    calls = []

    def load(source="smollm2-135m", **kwargs):
        calls.append(str(source))
        return default_model

    monkeypatch.setattr(interp, "load", load)
    return calls


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model or a dictionary fails the test: the command must stop before."""

    def boom(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")

    monkeypatch.setattr(interp, "load", boom)
    monkeypatch.setattr(sae, "load", boom)


def command(planted, *extra) -> list[str]:
    folder, corpus, _ = planted
    return ["explain", "--sae", str(folder), "--corpus", str(corpus), "--contexts", str(CONTEXTS), "--no-progress",
            *extra]


def usage_error(capsys, argv) -> str:
    """stderr of a command refused as a usage error (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_explains_every_latent_names_the_planted_tokens_and_refuses_to_overwrite(planted, default_model, capsys,
                                                                                 monkeypatch):
    folder, corpus, groups = planted
    out = folder / "explanations.jsonl"  # the default: beside the dictionary
    assert main(command(planted, "--latents", "0:6,6,7")) == 0
    printed = capsys.readouterr().out
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["latent"] for r in records] == list(range(8))
    for r, group in zip(records, groups):
        assert r["status"] == "ok"
        named = {rule.token for rule in parse_pattern(r["explanation"])}
        assert named == {default_model.to_string([t]) for t in group}, r["explanation"]
        assert r["scores"]["detection"]["value"] >= 0.9 and r["scores"]["fuzzing"]["value"] >= 0.9
        assert r["control_latent"] != r["latent"]
        # the shuffled control (another latent's tokens) marks the wrong tokens
        assert r["control"]["fuzzing"]["value"] <= 0.6
        assert r["provenance"] | {"model": "smollm2-135m", "sae": str(folder), "corpus": str(corpus),
                                  "contexts": CONTEXTS, "context_size": CONTEXT_SIZE, "explainer": "baseline",
                                  "scorers": ["detection", "fuzzing"]} == r["provenance"]
    # and tells contexts apart no better than chance on average (" <" and ">" of WikiText's "<unk>" share contexts)
    assert np.mean([r["control"]["detection"]["value"] for r in records]) <= 0.7
    assert "explanations" in printed and "latents" in printed
    assert printed.rstrip().endswith(f"wrote {out}")

    # again without --resume: refused before anything loads, the file untouched
    before = out.read_bytes()
    monkeypatch.setattr(interp, "load", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit, match=r"^interp explain: .*explanations\.jsonl exists; pass --resume") as e:
        main(command(planted, "--latents", "0:8"))
    assert "\n" not in str(e.value.code)
    assert out.read_bytes() == before


def test_resume_after_an_interrupted_run_does_the_rest_once(planted, tmp_path, loads):
    out = tmp_path / "run.jsonl"
    argv = command(planted, "--latents", "0:8", "--scorers", "detection", "--out", str(out))
    assert main(argv) == 0
    full = out.read_text(encoding="utf-8").splitlines()
    assert len(full) == 8
    # interrupted while writing the fourth line; the finished lines are marked, to tell kept lines from redone ones
    kept = [json.dumps(json.loads(line) | {"kept": True}) for line in full[:3]]
    out.write_text("\n".join(kept) + "\n" + full[3][: len(full[3]) // 2], encoding="utf-8")
    assert main(argv + ["--resume"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == kept  # kept as they were, not redone
    records = [json.loads(line) for line in lines]
    assert [r["latent"] for r in records] == list(range(8))  # each once, the torn line dropped
    assert [r.pop("kept", False) for r in records] == [True] * 3 + [False] * 5
    assert records == [json.loads(line) for line in full]  # the rest done as the first run did them
    assert loads == ["smollm2-135m", "smollm2-135m"]


@pytest.mark.parametrize(("spec", "expected"), [
    (":", list(range(8))), ("0:3,5,1", [0, 1, 2, 5]), ("6:", [6, 7]), (":2", [0, 1]), ("0:8:3", [0, 3, 6]),
    ("2,2, 4", [2, 4]), ("7", [7]),
])
def test_latents_resolve_against_the_width(spec, expected):
    assert latent_spec(spec).resolve(8) == expected


@pytest.mark.parametrize(("spec", "problem"), [
    ("a:b", "'a' is not a latent number"), ("5:2", "the range 5:2 is empty"), ("1,,2", "empty item"),
    ("1:2:3:4", "more than two ':'"), ("-1", "'-1' is not a latent number"), ("0:4:0", "step"),
])
def test_latents_syntax_errors(planted, capsys, no_loading, spec, problem):
    err = usage_error(capsys, command(planted, "--latents", spec))
    assert "argument --latents" in err and problem in err
    assert "A:B" in err or "step" in problem


@pytest.mark.parametrize(("spec", "problem"), [
    ("0:9", "0:9 reaches past the dictionary's 8 latents (0..7)"), ("3,8", "latent 8 is out of range; the "
                                                                           "dictionary has 8 latents"),
    ("8:", "the range 8:8 is empty"),
])
def test_latents_out_of_range_name_the_width_before_the_model_loads(planted, tmp_path, capsys, monkeypatch, spec,
                                                                    problem):
    monkeypatch.setattr(interp, "load", lambda *a, **k: pytest.fail("the model loaded"))
    err = usage_error(capsys, command(planted, "--latents", spec, "--out", str(tmp_path / "x.jsonl")))
    assert err.startswith("usage: interp explain") and problem in err


def test_unknown_scorer_lists_the_valid_ones(planted, capsys, no_loading):
    err = usage_error(capsys, command(planted, "--scorers", "detection,fuzz"))
    assert "argument --scorers: unknown scorer 'fuzz'; scorers: detection, fuzzing, simulation" in err


@pytest.mark.parametrize("spec", ["gpt-4o", "openai:gpt-4o", "openai:@http://127.0.0.1:9/v1", "openai:m@ftp://x",
                                  "local:", "Baseline"])
def test_explainer_parse_errors_give_the_accepted_forms(planted, capsys, no_loading, spec):
    err = usage_error(capsys, command(planted, "--explainer", spec))
    assert "argument --explainer" in err
    assert "openai:MODEL@" in err


def test_mismatched_options_are_refused_before_loading(planted, no_loading):
    with pytest.raises(SystemExit, match="--api-key-env is for an openai:MODEL@URL explainer"):
        main(command(planted, "--api-key-env", "X"))
    with pytest.raises(SystemExit, match="--scorer-backend explainer needs a chat model"):
        main(command(planted, "--scorer-backend", "explainer"))


def test_missing_api_key_fails_before_any_work(planted, tmp_path, monkeypatch, no_loading):
    monkeypatch.delenv("SOME_MISSING_VAR", raising=False)
    out = tmp_path / "x.jsonl"
    with pytest.raises(SystemExit, match=r"^interp explain: .*environment variable SOME_MISSING_VAR is not set"):
        main(command(planted, "--explainer", "openai:m@http://127.0.0.1:9/v1", "--api-key-env", "SOME_MISSING_VAR",
                     "--out", str(out)))
    assert not out.exists()


class ChatServer:
    """A chat-completions server on 127.0.0.1 answering every request with one token pattern, recording headers."""

    def __init__(self, answer: str):
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_explainer_sends_the_key_and_never_writes_it(planted, tmp_path, monkeypatch, capsys, loads):
    monkeypatch.setenv("INTERP_TEST_CLI_KEY", SECRET)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    server = ChatServer("the word 'the'")
    out = tmp_path / "llm.jsonl"
    try:
        assert main(command(planted, "--latents", "0:3", "--scorers", "detection", "--explainer",
                            f"openai:fake-model@{server.url}", "--api-key-env", "INTERP_TEST_CLI_KEY", "--out",
                            str(out))) == 0
    finally:
        server.close()
    captured = capsys.readouterr()
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["explanation"] for r in records] == ["the word 'the'"] * 3
    name = f"openai:fake-model@{server.url}"
    assert records[0]["provenance"]["explainer"] == f"llm:{name}"
    assert records[0]["provenance"]["scorers"] == [f"detection:{name}"]  # scored by the explainer's model
    # 3 explanations, then detection prompts of the scorer (real and control): every request authenticated
    assert len(server.headers) > 3
    assert all(h["authorization"] == f"Bearer {SECRET}" for h in server.headers)
    written = [out.read_text(encoding="utf-8"), captured.out, captured.err]
    written += [p.read_text(encoding="utf-8", errors="replace") for p in (tmp_path / "cache").rglob("*")
                if p.is_file()]
    assert len(written) > 3  # the replies were cached
    assert not any(SECRET in text for text in written)


def test_local_explainer_chats_with_the_loaded_model(planted, tmp_path, monkeypatch, loads, default_model):
    made = []

    class FakeLocal:
        def __init__(self, model, *, label=None):
            made.append((model, label))
            self.name = f"local:{label}"

        def chat(self, conversations, **kwargs):
            return [Reply(None, error="offline") for _ in conversations]

    monkeypatch.setattr("interp.explain.local.LocalModel", FakeLocal)
    out = tmp_path / "local.jsonl"
    assert main(command(planted, "--latents", "0:2", "--explainer", "local", "--out", str(out))) == 0
    assert made == [(default_model, "smollm2-135m")] and loads == ["smollm2-135m"]  # the one model serves both
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["status"], r["error"]) for r in records] == [("failed", "backend: offline")] * 2
    assert records[0]["provenance"]["scorers"] == ["detection:local:smollm2-135m", "fuzzing:local:smollm2-135m"]
