"""A checkpoint's tensors against what its config implies: every name, shape and dtype, once for every family and
every file format, before any tensor is read."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from interp.models.family import Family


@dataclasses.dataclass(frozen=True)
class Stored:
    """One tensor as a file declares it: ``name`` in the file, ``shape`` (numpy order), ``dtype`` as the format
    spells it, whether that dtype is floating point, and ``origin`` (the file, for errors)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    is_float: bool
    origin: str


def check_tensors(stored: Mapping[str, Stored], family: Family, config, *, where: str, config_name: str,
                  fix: str = "use the config saved with these weights") -> None:
    """Refuse a checkpoint whose tensors are not exactly those ``family.hf_weight_shapes(config)`` lists.

    ``stored`` maps Hugging Face names (or those names without one of ``family.HF_OPTIONAL_PREFIXES``) to what the
    file declares; names matching ``family.HF_IGNORED`` carry no weights and are skipped.
    ``where`` names the checkpoint, ``config_name`` what its expectations come from and ``fix`` the remedy for a
    shape that disagrees, in errors.
    """
    if config.n_layers > len(stored):  # every layer holds a tensor: no need to list what cannot all be there
        raise ValueError(
            f"{where} holds {len(stored)} tensors, too few for the {config.n_layers} layers {config_name} calls for; "
            f"is the download complete and does {config_name} belong to these weights?"
        )
    try:
        expected = family.hf_weight_shapes(config)
    except ValueError as e:  # the loader, listing what it reads, met a setting no model can have
        raise ValueError(f"{where}: {config_name} describes no model that can be built: {e}") from None
    prefixes = family.HF_OPTIONAL_PREFIXES
    ignored = re.compile("|".join(family.HF_IGNORED) or "(?!)")
    found, missing = {}, []
    for name in expected:
        key = name if name in stored else next(
            (name[len(p):] for p in prefixes if name.startswith(p) and name[len(p):] in stored), None)
        if key is None:
            missing.append(name)
        else:
            found[name] = stored[key]
    if missing:
        raise ValueError(
            f"{where} lacks {len(missing)} tensors {config_name} calls for, e.g. {missing[:3]}; is the download "
            f"complete and does {config_name} belong to these weights?"
        )
    used = {s.name for s in found.values()}
    extra = [s.name for s in stored.values() if s.name not in used and not ignored.fullmatch(s.name)]
    if extra:
        raise ValueError(
            f"{where} holds {len(extra)} tensors {config_name} does not account for, e.g. {sorted(extra)[:5]}; "
            f"does {config_name} belong to these weights (number of layers, tied embeddings, biases)?"
        )
    not_float = [(n, s) for n, s in found.items() if not s.is_float]
    if not_float:
        name, s = not_float[0]
        raise ValueError(
            f"{s.origin}: tensor '{s.name}' is stored as {s.dtype}, but model weights are floating point "
            f"(F32, F16, BF16, F8 or a GGUF quantization){_more(not_float)}; the file is corrupt or holds something "
            "other than model weights: download or copy it again"
        )
    wrong = [(n, s) for n, s in found.items() if tuple(s.shape) != tuple(expected[n])]
    if wrong:
        name, s = wrong[0]
        raise ValueError(
            f"{s.origin}: tensor '{s.name}' has shape {list(s.shape)}, but {config_name} implies "
            f"{list(expected[name])}{_more(wrong)}; the weights and {config_name} do not belong together: {fix}"
        )


def _more(problems: list) -> str:
    return f" (and {len(problems) - 1} more tensors like it)" if len(problems) > 1 else ""
