"""Result objects that show themselves: a short ``repr`` in a terminal and a small table in a notebook.

Every result the library returns (patching sweeps, logit lens, direct logit attribution, head scores, edge
scores, attribution graphs, feature cards, ...) inherits :class:`Result` and describes itself once, in
``_summary()``: what it is, its shape, a few named facts and its most notable entries. ``repr`` and
``_repr_html_`` are both built from that description, so a ``[30, 8, 12, 49152]`` array never floods a cell and
every result reads the same way:

    >>> lens
    LensResult(logit lens, own scale; readout 31 × batch 1 × pos 6 × vocab 49152)
      top token at the last position of prompt 0:
        embed       ' is'     0.0123
        ...
        block 29    ' Paris'  0.7712

A subclass defines only ``_summary`` (returning a :class:`Summary`); :func:`top_entries` ranks the entries of a
labelled grid for it. The HTML is self-contained (inline styles, no scripts) and every string in it is escaped.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Result", "Summary", "format_value", "token_strings", "token_texts", "top_entries"]

_TOP_IN_REPR = 8  # entries a repr lists; the HTML table shows every entry the summary gives


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a result says about itself.

    ``kind``: what it is, in words (``"activation patching of resid_pre"``). ``shape``: axis name -> size.
    ``facts``: a few named values (numbers or short strings) worth seeing first. ``top``: the most notable
    entries as (label, value), best first, under the heading ``top_title``.
    """

    kind: str
    shape: Mapping[str, int] = dataclasses.field(default_factory=dict)
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    top: Sequence[tuple[str, Any]] = ()
    top_title: str = "top entries"


def format_value(v: Any, signed: bool = False) -> str:
    """A value as short text: floats with four significant digits (``+`` sign when ``signed``), NaN as ``nan``,
    sequences of values joined by spaces, everything else ``str``."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):+d}" if signed else str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):+.4g}" if signed else f"{float(v):.4g}"
    if isinstance(v, (tuple, list)):
        return " ".join(format_value(x, signed) for x in v)
    return str(v)


def token_texts(tokenizer, ids) -> list[str]:
    """Each id as its own text, quoted (``' Paris'``: spaces and newlines stay visible), through ``tokenizer``
    (a ``Tokenizer`` or a model); ``"#id"`` when there is none."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if tokenizer is None or getattr(tokenizer, "tokenizer", tokenizer) is None:
        return [f"#{i}" for i in ids]
    return [repr(tokenizer.to_string([i])) for i in ids]


def token_strings(model, ids) -> list[str]:
    """Each id as its own text through ``model`` (a model or a ``Tokenizer``), or ``"#id"`` without one (``None``
    or a model without a tokenizer)."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    source = getattr(model, "tokenizer", model)
    if source is None:
        return [f"#{i}" for i in ids]
    return [source.to_string([i]) for i in ids]


def _shape_text(shape: Mapping[str, int]) -> str:
    return " × ".join(f"{k} {v}" for k, v in shape.items())


def top_entries(values: np.ndarray, labels: Sequence[Sequence[str]], axes: Sequence[str] | None = None, k: int = 5,
                *, by_magnitude: bool = True) -> list[tuple[str, float]]:
    """The ``k`` entries of ``values`` with the largest magnitude (or largest value, ``by_magnitude=False``),
    as (label, value). ``labels[i]`` names the entries along axis ``i``; with ``axes`` each part of a label is
    prefixed by its axis name (``"layer 3, pos 5"``). NaN entries are never listed."""
    values = np.asarray(values, np.float64)
    if values.ndim != len(labels):
        raise ValueError(f"values have {values.ndim} axes but labels name {len(labels)}")
    key = np.abs(values) if by_magnitude else values.copy()
    key[~np.isfinite(values)] = -np.inf
    order = np.argsort(-key, axis=None, kind="stable")[:k]
    out = []
    for flat in order:
        if not np.isfinite(key.flat[flat]):
            break
        idx = np.unravel_index(flat, values.shape)
        parts = [str(labels[a][i]) if axes is None else f"{axes[a]} {labels[a][i]}" for a, i in enumerate(idx)]
        out.append((", ".join(parts), float(values[idx])))
    return out


class Result:
    """Base of the library's result objects: ``repr`` and ``_repr_html_`` built from ``_summary()``.

    Subclasses are usually frozen dataclasses; they keep their fields and their own methods, and add one
    method, ``_summary(self) -> Summary``. A subclass that defines ``__repr__`` itself keeps it.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # @dataclass writes a field-by-field __repr__ (whole arrays) into the class unless the class's own dict
        # already holds one, so the inherited short repr is placed there before the decorator runs.
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = cls.__repr__

    def _summary(self) -> Summary:
        raise NotImplementedError(f"{type(self).__name__} does not describe itself: define _summary()")

    def __repr__(self) -> str:
        s = self._summary()
        head = f"{type(self).__name__}({s.kind}" + (f"; {_shape_text(s.shape)}" if s.shape else "") + ")"
        lines = [head]
        if s.facts:
            lines.append("  " + ", ".join(f"{k} {format_value(v)}" for k, v in s.facts.items()))
        if s.top:
            shown = list(s.top)[:_TOP_IN_REPR]
            width = max(len(str(label)) for label, _ in shown)
            signed = any(isinstance(v, (float, np.floating)) and v < 0 for _, v in shown)
            lines.append(f"  {s.top_title}:")
            lines += [f"    {label!s:<{width}}  {format_value(v, signed)}" for label, v in shown]
            if len(s.top) > len(shown):
                lines.append(f"    ... {len(s.top) - len(shown)} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        s = self._summary()
        e = html.escape
        cell = 'style="border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top"'
        rows = []
        if s.shape:
            rows.append(f"<tr><th {cell}>shape</th><td {cell}>{e(_shape_text(s.shape))}</td></tr>")
        rows += [f"<tr><th {cell}>{e(str(k))}</th><td {cell}>{e(format_value(v))}</td></tr>"
                 for k, v in s.facts.items()]
        table = ('<table style="border-collapse:collapse;font-size:0.9em;margin:0.3em 0">'
                 f'<caption style="text-align:left;caption-side:top"><b>{e(type(self).__name__)}</b> '
                 f"{e(s.kind)}</caption>{''.join(rows)}</table>")
        top = ""
        if s.top:
            signed = any(isinstance(v, (float, np.floating)) and v < 0 for _, v in s.top)
            body = "".join(f"<tr><td {cell}>{e(str(label))}</td><td {cell}>{e(format_value(v, signed))}</td></tr>"
                           for label, v in s.top)
            top = ('<table style="border-collapse:collapse;font-size:0.9em;margin:0.3em 0">'
                   f'<tr><th {cell} colspan="2">{e(s.top_title)}</th></tr>{body}</table>')
        return f'<div class="interp-result">{table}{top}</div>'
