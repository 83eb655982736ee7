"""Loading from the Hugging Face Hub: tiny checkpoints of every family served by a fake Hub on 127.0.0.1 load through
``interp.load("org/name")`` exactly as their folders do, from ``huggingface_hub``'s cache the second time; pickled
weights, gated repos, missing repos, offline mode and failed downloads are refused with the cause and the fix."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

import interp
from interp.weights import hub_snapshot, is_repo_id
from tests.conftest import make_hf_model
from tests.hub_server import FakeHub
from tests.models import test_gemma_qwen3_parity as gemma_qwen3
from tests.models import test_gpt2_neox_parity as gpt2_neox

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["<unk>", "<s>", "</s>", *"the a red fox can run and jump over lazy dog".split()]
TOKENS = np.array([[1, 4, 5, 6, 9, 3, 12]])
# one checkpoint per family the loader reads (and the Llama-layout architectures that differ in their config);
# "llama" is saved in shards, to be fetched through its index
MAKERS = {
    "gpt2": lambda: gpt2_neox.make_hf("gpt2"),
    "neox": lambda: gpt2_neox.make_hf("neox_parallel"),
    "llama": lambda: make_hf_model("gqa"),
    "qwen2": lambda: make_hf_model("qwen2"),
    "mistral": lambda: make_hf_model("mistral_window"),
    "gemma": lambda: gemma_qwen3.make_hf("gemma"),
    "gemma3": lambda: gemma_qwen3.make_hf("gemma3"),
}
# files a repo also holds that must never be fetched
NOT_FETCHED = {"pytorch_model.bin": b"not a pickle interp may open", "flax_model.msgpack": b"x", "README.md": b"# tiny",
               "original/consolidated.safetensors": b"x", "onnx/model.onnx": b"x"}


def _tokenizer_files(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({**specials, "model_max_length": 64}))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> the folder of its tiny checkpoint (safetensors, tokenizer files)."""
    out = {}
    for name, make in MAKERS.items():
        folder = tmp_path_factory.mktemp(f"hub-{name}")
        shard = {"max_shard_size": "40KB"} if name == "llama" else {}
        make().save_pretrained(folder, safe_serialization=True, **shard)
        _tokenizer_files(folder)
        out[name] = folder
    assert (out["llama"] / "model.safetensors.index.json").exists()
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _logits(model) -> np.ndarray:
    return np.asarray(model(TOKENS))


@pytest.mark.parametrize("family", list(MAKERS))
def test_hub_load_equals_folder_load_then_uses_the_cache(family, checkpoints, hub):
    folder = checkpoints[family]
    hub.add_repo(f"org/{family}", {**_files(folder), **NOT_FETCHED})
    from_hub = interp.load(f"org/{family}")
    from_dir = interp.load(folder)
    assert type(from_hub.config) is type(from_dir.config) and from_hub.config == from_dir.config
    np.testing.assert_array_equal(_logits(from_hub), _logits(from_dir))
    assert from_hub.tokenizer.encode("the red fox can run") == from_dir.tokenizer.encode("the red fox can run")
    ids = lambda t: (t.bos_id, t.eos_id, t.pad_id, t.add_bos)  # noqa: E731
    assert ids(from_hub.tokenizer) == ids(from_dir.tokenizer)
    assert sorted(hub.downloads()) == sorted(f"org/{family}/{f.name}" for f in folder.iterdir())

    hub.requests.clear()
    again = interp.load(f"org/{family}")
    assert hub.requests == []
    np.testing.assert_array_equal(_logits(again), _logits(from_dir))


def test_offline_mode_reads_the_cache_and_asks_nothing(checkpoints, hub, monkeypatch):
    sha = hub.add_repo("org/gpt2", _files(checkpoints["gpt2"]))
    online = interp.load("org/gpt2")
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.testing.assert_array_equal(_logits(interp.load("org/gpt2")), _logits(online))
    np.testing.assert_array_equal(_logits(interp.load("org/gpt2", revision=sha)), _logits(online))
    assert hub.requests == []
    with pytest.raises(FileNotFoundError, match=r"'org/neox' \(revision 'main'\) is not complete in the cache .*"
                                                r"HF_HUB_OFFLINE is set.*unset HF_HUB_OFFLINE"):
        interp.load("org/neox")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="start Python without HF_HUB_OFFLINE"):
        interp.load("org/neox")
    assert hub.requests == []


def test_cache_without_a_listing_is_read_offline_and_checked_online(checkpoints, hub, monkeypatch, tmp_path):
    """A snapshot written by a tool that keeps no listing of the repo (transformers): offline, its config and weights
    are enough; online, the Hub is asked what the repo holds and nothing is downloaded again."""
    hub.add_repo("org/llama", _files(checkpoints["llama"]))
    online = interp.load("org/llama")
    storage = tmp_path / "hf" / "hub" / "models--org--llama"
    for listing in (storage / "trees").iterdir():
        listing.unlink()
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.testing.assert_array_equal(_logits(interp.load("org/llama")), _logits(online))
    assert hub.requests == []
    shard = next((storage / "snapshots").glob("*/model-00002-*.safetensors"))
    shard.unlink()  # a snapshot missing a shard is never loaded
    with pytest.raises(FileNotFoundError, match="is not complete in the cache"):
        interp.load("org/llama")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    np.testing.assert_array_equal(_logits(interp.load("org/llama")), _logits(online))
    assert hub.downloads() == []  # the shard's blob was still in the cache: linked again, not downloaded


def test_a_revision_is_a_commit_or_branch_the_hub_knows(checkpoints, hub):
    sha = hub.add_repo("org/gpt2", _files(checkpoints["gpt2"]))
    assert hub_snapshot("org/gpt2", revision=sha).name == sha
    with pytest.raises(FileNotFoundError, match="'org/gpt2' has no revision 'v9' on http://127.0.0.1"):
        interp.load("org/gpt2", revision="v9")


def test_revision_written_after_an_at_sign_reaches_the_hub_from_python_and_the_command_line(checkpoints, hub,
                                                                                           tmp_path):
    sha = hub.add_repo("org/gpt2", _files(checkpoints["gpt2"]))
    np.testing.assert_array_equal(_logits(interp.load(f"org/gpt2@{sha}")), _logits(interp.load(checkpoints["gpt2"])))
    assert interp.load(f"org/gpt2@{sha}", revision=sha).config == interp.load(checkpoints["gpt2"]).config
    with pytest.raises(FileNotFoundError, match="'org/gpt2' has no revision 'v9'"):
        interp.load("org/gpt2@v9")
    with pytest.raises(ValueError, match="names revision 'v9' and revision='main' was passed too; give one"):
        interp.load("org/gpt2@v9", revision="main")
    for bad in ("org/gpt2@", "org/gpt2@a@b"):
        with pytest.raises(ValueError, match="'owner/name@revision' with one '@'"):
            interp.load(bad)
    with pytest.raises(FileNotFoundError, match="nor a Hugging Face Hub repo id"):
        interp.load("not a repo@main")
    # the command line passes the text on as it is: predict reads the model at that revision
    hub.requests.clear()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HOME": str(tmp_path / "fresh")}
    run = subprocess.run([sys.executable, "-m", "interp", "predict", "--model", f"org/gpt2@{sha}", "--prompt",
                          "the red fox"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "the red fox" in run.stdout
    repo = [path for _, path in hub.requests if "org/gpt2" in path]
    assert repo and all(sha in path for path in repo), repo


def test_unknown_repo_names_it_and_says_to_check_the_spelling(hub):
    with pytest.raises(FileNotFoundError, match=r"no repo 'org/missing' on http://127\.0\.0\.1:\d+ .*check the "
                                                r"spelling.*HF_TOKEN"):
        interp.load("org/missing")


def test_gated_repo_needs_a_token_that_was_granted_access(checkpoints, hub, monkeypatch):
    hub.add_repo("org/gated", _files(checkpoints["gpt2"]), gated=True)
    with pytest.raises(PermissionError, match=r"'org/gated' is a gated repo and no token is set: accept its terms.*"
                                              r"set HF_TOKEN.*huggingface-cli login"):
        interp.load("org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    with pytest.raises(PermissionError, match="your token has not been granted access"):
        interp.load("org/gated")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    np.testing.assert_array_equal(_logits(interp.load("org/gated")), _logits(interp.load(checkpoints["gpt2"])))


def test_token_saved_by_login_under_hf_home_is_sent(checkpoints, hub, tmp_path):
    hub.add_repo("org/gated", _files(checkpoints["gpt2"]), gated=True)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text(hub.token + "\n")
    assert interp.load("org/gated").config == interp.load(checkpoints["gpt2"]).config


def test_pickle_only_repo_is_refused_before_any_download(checkpoints, hub):
    config = (checkpoints["gpt2"] / "config.json").read_bytes()
    hub.add_repo("org/pickled", {"config.json": config, "pytorch_model.bin": b"\x80\x04 a pickle", "model.pt": b"x"})
    with pytest.raises(ValueError, match=r"'org/pickled' holds its weights only as pickles \(model.pt, "
                                         r"pytorch_model.bin\), which interp does not read.*convert them to "
                                         r"safetensors.*safe_serialization=True"):
        interp.load("org/pickled")
    assert hub.downloads() == []


def test_repo_without_config_or_weights_is_refused(hub):
    hub.add_repo("org/readme", {"README.md": b"# nothing"})
    with pytest.raises(FileNotFoundError, match="'org/readme' has no config.json at its top level"):
        interp.load("org/readme")
    hub.add_repo("org/empty", {"config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match=r"'org/empty' has no \*.safetensors weights"):
        interp.load("org/empty")


def test_failed_download_names_repo_and_file_and_its_part_is_never_loaded(checkpoints, hub, monkeypatch):
    hub.add_repo("org/gpt2", _files(checkpoints["gpt2"]))
    hub.fail("org/gpt2", "model.safetensors", 403)
    with pytest.raises(ConnectionError, match=r"answered HTTP 403 for file 'model.safetensors' of 'org/gpt2'"):
        interp.load("org/gpt2")
    before = set(hub.downloads())
    assert "org/gpt2/config.json" in before  # part of the snapshot is in the cache, the weights not

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="is not complete in the cache"):
        interp.load("org/gpt2")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.heal()
    hub.requests.clear()
    model = interp.load("org/gpt2")
    assert "org/gpt2/model.safetensors" in hub.downloads() and not before & set(hub.downloads())
    np.testing.assert_array_equal(_logits(model), _logits(interp.load(checkpoints["gpt2"])))


def test_unreachable_hub_names_repo_and_endpoint(hub, monkeypatch):
    with FakeHub() as closed:
        endpoint = closed.endpoint
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(ConnectionError, match=rf"could not download 'org/x' from {endpoint} .*HF_HUB_OFFLINE=1"):
        interp.load("org/x")


def test_local_paths_and_packaged_names_come_before_the_hub(checkpoints, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "gpt2").symlink_to(checkpoints["gpt2"], target_is_directory=True)
    interp.load("org/gpt2")
    assert hub.requests == []
    with pytest.raises(ValueError, match="revision='v1' applies to Hub repo ids"):
        interp.load("org/gpt2", revision="v1")
    with pytest.raises(FileNotFoundError, match="nor a Hugging Face Hub repo id"):
        interp.load("no/such/folder")
    assert hub.requests == []


@pytest.mark.parametrize(("text", "ok"), [
    ("HuggingFaceTB/SmolLM2-135M", True), ("org/name.v1_2", True), ("org", False), ("a/b/c", False),
    ("org/-name", False), ("org/na--me", False), ("org/na..me", False), ("./x", False), ("org/", False),
])
def test_repo_id_syntax(text, ok):
    assert is_repo_id(text) is ok


def test_two_processes_loading_at_once_leave_one_consistent_cache(checkpoints, hub, tmp_path):
    hub.add_repo("org/llama", _files(checkpoints["llama"]))
    hub.delay = 0.5  # both processes are downloading at once, not one after the other
    script = textwrap.dedent("""
        import sys
        from interp.weights.hub import hub_snapshot
        print(hub_snapshot("org/llama"))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(folders) == 1
    # the file lock lets one process download each file; the other finds it whole
    assert sorted(hub.downloads()) == sorted(f"org/llama/{f.name}" for f in checkpoints["llama"].iterdir())
    blobs = tmp_path / "hf" / "hub" / "models--org--llama" / "blobs"
    assert not list(blobs.glob("*.incomplete"))
    for blob in blobs.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    hub.requests.clear()
    np.testing.assert_array_equal(_logits(interp.load("org/llama")), _logits(interp.load(checkpoints["llama"])))
    assert hub.requests == []
