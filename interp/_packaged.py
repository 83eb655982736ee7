"""The data files packaged with interp (``data/``, installed as the package ``interp.data``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def data_folder(sub: str):
    """``interp.data/{sub}``; in a source tree that another install's ``interp.data`` shadows, the ``data/``
    folder beside this package."""
    folder = resources.files("interp.data").joinpath(sub)
    if not folder.is_dir():
        folder = Path(__file__).resolve().parents[1] / "data" / sub
    return folder


def load_data_json(sub: str, name: str, what: str) -> dict:
    """``data/{sub}/{name}.json``; an unknown ``name`` is refused with the available ones (``what``: how the error
    names this kind of data, e.g. ``"probe data"``)."""
    from interp.hooks import suggest

    folder = data_folder(sub)
    available = sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    if not isinstance(name, str) or name not in available:
        raise ValueError(f"no packaged {what} named {name!r}{suggest(str(name), available)}; available: "
                         f"{', '.join(available)}")
    return json.loads(folder.joinpath(f"{name}.json").read_text(encoding="utf-8"))
