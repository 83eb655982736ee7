"""Checkpoints from the Hugging Face Hub: a repo id (``"HuggingFaceTB/SmolLM2-135M"``) resolved to a snapshot folder in
``huggingface_hub``'s cache, holding only what :func:`interp.weights.load_hf_dir` reads.

The environment is read at each call, not at import: ``HF_ENDPOINT`` (the Hub, or a mirror), ``HF_HOME`` /
``HF_HUB_CACHE`` (the cache), ``HF_TOKEN`` / ``HF_TOKEN_PATH`` (or the token ``huggingface-cli login`` saved) and
``HF_HUB_OFFLINE``. A snapshot already complete in the cache is used without asking the Hub, so a second load makes no
request; a new commit of a branch is only seen by passing its commit hash as ``revision``. Files are written by
``huggingface_hub``: each is downloaded to an ``.incomplete`` file and renamed once whole, under a file lock, so two
processes loading the same repo share one consistent cache, and a snapshot missing any wanted file is never returned.
Pickled weights (``*.bin``, ``*.pt``) are never downloaded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

# what a checkpoint folder needs besides its weights: config, generation defaults, tokenizer files
SMALL_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
)
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
# never fetched, whatever the wanted names: pickles and other frameworks' weights, and anything in a subfolder
# (``original/``, ``onnx/``: other formats of the same weights)
IGNORE = ["*/*", *(f"*{s}" for s in PICKLE_SUFFIXES)]

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "on", "yes", "true"}

__all__ = ["hub_snapshot", "is_repo_id"]


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the Hub's repo id syntax ``owner/name`` (letters, digits, ``-``, ``_``, ``.``; no ``--``
    or ``..``; neither part starts or ends with ``-`` or ``.``)."""
    return bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text


def hub_snapshot(repo_id: str, *, revision: str | None = None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit hash; the default branch if
    None), downloaded into ``huggingface_hub``'s cache unless it is complete there already.

    Only the files a checkpoint folder needs are fetched: :data:`SMALL_FILES`, the safetensors index and the shards
    it names, or the top-level ``*.safetensors``. A repo with pickled weights only is refused before anything is
    downloaded. Errors name the repo (and the file when one failed) and say what to do."""
    if not is_repo_id(repo_id):
        raise ValueError(f"'{repo_id}' is not a Hub repo id; it should read 'owner/name', "
                         "as in 'HuggingFaceTB/SmolLM2-135M'")
    revision = revision or "main"
    hub = _Hub(repo_id, revision)
    cached = hub.cached()
    if cached is not None:
        return cached
    if hub.offline:
        how = ("unset HF_HUB_OFFLINE (or set it to 0)" if not hub.offline_at_import else
               "start Python without HF_HUB_OFFLINE (huggingface_hub read it when it was imported)")
        raise FileNotFoundError(
            f"'{repo_id}' (revision '{revision}') is not complete in the cache {hub.cache_dir} and HF_HUB_OFFLINE is "
            f"set, so the Hub is not asked: {how} to download it once, or point HF_HOME / HF_HUB_CACHE at a cache "
            "that holds it")
    return hub.download()


def hub_files(repo_id: str, *, revision: str | None = None) -> list[str]:
    """Every file path in ``repo_id`` at ``revision`` (asked of the Hub; nothing is downloaded). Errors as
    :func:`hub_snapshot`'s."""
    hub = _checked(repo_id, revision)
    return hub.call(lambda: [s.rfilename for s in hub.api().model_info(repo_id, revision=hub.revision).siblings or []])


def hub_download(repo_id: str, patterns: list[str], *, revision: str | None = None) -> Path:
    """The local snapshot folder of ``repo_id`` holding its files that match ``patterns`` (``fnmatch`` patterns such
    as ``"layer_12/width_16k/*"``; pickled weights never), in ``huggingface_hub``'s cache, with the token, endpoint
    and offline mode of :func:`hub_snapshot` (offline: from the cache only). Errors as :func:`hub_snapshot`'s."""
    hub = _checked(repo_id, revision)
    return Path(hub.call(lambda: hub.hf.snapshot_download(
        repo_id, revision=hub.revision, cache_dir=hub.cache_dir, endpoint=hub.endpoint, token=hub.token,
        allow_patterns=list(patterns), ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES],
        local_files_only=hub.offline)))


def _checked(repo_id: str, revision: str | None) -> _Hub:
    if not is_repo_id(repo_id):
        raise ValueError(f"'{repo_id}' is not a Hub repo id; it should read 'owner/name', "
                         "as in 'HuggingFaceTB/SmolLM2-135M'")
    return _Hub(repo_id, revision or "main")


class _Hub:
    """One repo at one revision, with the environment as it is now."""

    def __init__(self, repo_id: str, revision: str):
        import huggingface_hub
        import huggingface_hub.constants

        self.hf = huggingface_hub
        self.repo_id, self.revision = repo_id, revision
        self.endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        self.cache_dir = _cache_dir()
        self.token = _token()
        # read as huggingface_hub reads it; that library also stays offline if it was when it was imported
        flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        self.offline_at_import = bool(huggingface_hub.constants.HF_HUB_OFFLINE)
        self.offline = flag.strip().lower() in _TRUE or self.offline_at_import
        self.storage = Path(self.cache_dir) / f"models--{repo_id.replace('/', '--')}"

    def cached(self) -> Path | None:
        """The snapshot folder when every wanted file is in it (its listing read from the cache), else None."""
        commit = self.revision if _COMMIT.fullmatch(self.revision) else None
        ref = self.storage / "refs" / self.revision
        if commit is None and ref.is_file():
            commit = ref.read_text().strip()
        if commit is None:
            return None
        folder = self.storage / "snapshots" / commit
        if not folder.is_dir():
            return None
        names = self._cached_listing(commit)
        if names is None:
            # downloaded by a tool that keeps no listing (transformers, an older huggingface_hub): online, ask the
            # Hub; offline, take the folder if its config and weights are whole (a file is only linked into a
            # snapshot once downloaded in full)
            if not self.offline:
                return None
            names = [p.name for p in folder.iterdir()]
            if INDEX not in names and not any(n.endswith(".safetensors") for n in names):
                return None
        try:
            wanted = _wanted(self.repo_id, names, folder)
        except (FileNotFoundError, ValueError):
            return None
        return folder if all((folder / n).is_file() for n in wanted) else None

    def _cached_listing(self, commit: str) -> list[str] | None:
        """The repo's file names at ``commit`` as ``huggingface_hub`` cached them when it downloaded it, or None
        (never downloaded here, or a ``huggingface_hub`` that keeps no listing: then the Hub is asked)."""
        get = getattr(self.hf, "get_cached_repo_tree", None)
        if get is None:
            return None
        try:
            return [f.path for f in get(self.repo_id, revision=commit, cache_dir=self.cache_dir)]
        except Exception:  # noqa: BLE001 - no listing (or an unreadable one) means: ask the Hub
            return None

    def api(self):
        return self.hf.HfApi(endpoint=self.endpoint, token=self.token)

    def call(self, fn):
        """``fn()``, with its errors explained as :meth:`_explain` does."""
        try:
            return fn()
        except Exception as e:
            explained = self._explain(e)
            if explained is e:
                raise
            raise explained from e

    def download(self) -> Path:
        try:
            info = self.hf.HfApi(endpoint=self.endpoint, token=self.token).model_info(
                self.repo_id, revision=self.revision)
            names = [s.rfilename for s in info.siblings or []]
            _refuse_without_weights(self.repo_id, names)
            # the shards of a sharded checkpoint are known once its index is here
            index_folder = self._fetch(info.sha, [INDEX]) if INDEX in names else None
            wanted = _wanted(self.repo_id, names, index_folder)
            folder = self._fetch(info.sha, wanted)
        except Exception as e:
            explained = self._explain(e)
            if explained is e:
                raise
            raise explained from e
        missing = [n for n in wanted if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"the download of '{self.repo_id}' left out {', '.join(missing)} in {folder}; "
                                    "load it again to complete it")
        return folder

    def _fetch(self, commit: str, names: list[str]) -> Path:
        folder = self.hf.snapshot_download(
            self.repo_id, revision=commit, cache_dir=self.cache_dir, endpoint=self.endpoint, token=self.token,
            allow_patterns=[_literal(n) for n in names], ignore_patterns=IGNORE)
        if self.revision != commit:  # a branch or tag: remember its commit, so that the next load asks nothing
            ref = self.storage / "refs" / self.revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            if not ref.is_file() or ref.read_text().strip() != commit:
                tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
                tmp.write_text(commit)
                tmp.replace(ref)
        return Path(folder)

    def _explain(self, e: Exception) -> Exception:
        """``e`` (from ``huggingface_hub`` or the network) as an error naming the repo, the file, and the fix."""
        from huggingface_hub import utils as hfu

        repo, where = self.repo_id, self.endpoint or self.hf.constants.ENDPOINT
        if not type(e).__module__.startswith("huggingface_hub") and isinstance(e, (FileNotFoundError, ValueError)):
            return e  # ours, already explained
        if isinstance(e, hfu.GatedRepoError):
            how = "your token has not been granted access" if self.token else "no token is set"
            return PermissionError(
                f"'{repo}' is a gated repo and {how}: accept its terms on its page on the Hub ({where}/{repo}), "
                "then set HF_TOKEN to a token of that account or run `huggingface-cli login`")
        if isinstance(e, hfu.RevisionNotFoundError):
            return FileNotFoundError(f"'{repo}' has no revision '{self.revision}' on {where}; pass a branch, tag or "
                                     "commit hash that exists (revision=None is the default branch)")
        if isinstance(e, hfu.RepositoryNotFoundError):
            return FileNotFoundError(
                f"no repo '{repo}' on {where} (nor a local folder of that name): check the spelling (owner/name); "
                "if it is private, set HF_TOKEN to a token that can read it or run `huggingface-cli login`")
        http = _cause(e, hfu.HfHubHTTPError)
        if http is not None and getattr(http, "response", None) is not None:
            status, url = http.response.status_code, str(http.response.url)
            return ConnectionError(f"the Hub ({where}) answered HTTP {status} for {_what(repo, url)}; "
                                   "try again later, or check HF_ENDPOINT and your token")
        if isinstance(e, (hfu.LocalEntryNotFoundError, hfu.OfflineModeIsEnabled)) or _is_transport(e):
            return ConnectionError(f"could not download '{repo}' from {where} ({type(e).__name__}: {e}); check the "
                                   "network connection and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache only")
        if isinstance(e, OSError):
            return OSError(f"downloading '{repo}' into the cache {self.cache_dir} failed ({type(e).__name__}: {e}); "
                           "check the space and permissions there, or set HF_HOME to another folder")
        return e


def _wanted(repo_id: str, names: list[str], folder: Path | None) -> list[str]:
    """The files of a checkpoint among the repo's ``names``: config and tokenizer files, and the weights (the shards
    the index in ``folder`` names, or every top-level ``*.safetensors``)."""
    _refuse_without_weights(repo_id, names)
    wanted = [n for n in names if n in SMALL_FILES]
    if INDEX not in names:
        return wanted + [n for n in names if "/" not in n and n.endswith(".safetensors")]
    index = Path(folder or ".") / INDEX
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"'{repo_id}': {INDEX} cannot be read ({type(e).__name__}: {e}); the repo's index is "
                         "damaged or its download was cut: load it again") from None
    absent = [s for s in shards if s not in names]
    if absent:
        raise FileNotFoundError(f"'{repo_id}': {INDEX} names shards the repo does not hold: {', '.join(absent)}")
    return [*wanted, INDEX, *shards]


def _refuse_without_weights(repo_id: str, names: list[str]) -> None:
    top = [n for n in names if "/" not in n]
    if "config.json" not in top:
        raise FileNotFoundError(f"'{repo_id}' has no config.json at its top level: it is not a transformers "
                                "checkpoint interp can read")
    if any(n.endswith(".safetensors") for n in top):
        return
    pickles = [n for n in top if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"'{repo_id}' holds its weights only as pickles ({', '.join(pickles[:3])}), which interp does not read "
            "(loading a pickle can run arbitrary code): convert them to safetensors (transformers: "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`) and load "
            "that folder, or use a revision or copy of the repo that has *.safetensors")
    raise FileNotFoundError(f"'{repo_id}' has no *.safetensors weights at its top level")


def _literal(name: str) -> str:
    """``name`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _what(repo_id: str, url: str) -> str:
    path = unquote(urlsplit(url).path)
    marker = f"/{repo_id}/resolve/"
    if marker in path:
        _, rest = path.split(marker, 1)
        return f"file '{rest.split('/', 1)[-1]}' of '{repo_id}'"
    return f"'{repo_id}' ({path})"


def _cause(e: BaseException | None, kind: type) -> BaseException | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _is_transport(e: BaseException) -> bool:
    """A network failure of the HTTP client ``huggingface_hub`` uses (httpx, or requests in older versions)."""
    kinds = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            kinds.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return any(_cause(e, k) is not None for k in kinds)


def _cache_dir() -> str:
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(hub))


def _token() -> str | bool:
    """``HF_TOKEN``, else the token saved by ``huggingface-cli login`` under the current ``HF_HOME``, else False
    (send none)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token.strip()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    path = Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token"))))
    try:
        saved = path.read_text().strip()
    except OSError:
        return False
    return saved or False
