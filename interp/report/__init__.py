"""Self-contained HTML reports: ``Report`` collects figures, widgets (as static views), feature cards, metrics
and text into one file that renders offline (plotly.js is inlined; nothing is fetched), with provenance
(model and weight hash, dictionaries, corpus, package versions, git revision, date).

    report = Report("IOI in SmolLM2")
    report.add(patching_result, title="Residual stream patching")   # any result: its summary and figures
    report.add(lens_result)                    # LensResult, DLAResult, HeadScores, EdgeResult, Graph, ...
    report.add(graph_explorer)                 # a widget: its static view
    report.add_metrics({"FVU": 0.12, "L0": 32})
    report.set_provenance(model=model, model_name="smollm2-135m", corpus="wikitext-2")
    report.save("report.html")                 # written atomically

Every string from outside (token strings above all) is escaped: a token ``<script>alert(1)</script>`` shows as
text.
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import json
import platform
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from interp.viz import escape
from interp.viz.figures import FigureSpec
from interp.viz.views import HTML, Linked, result_view
from interp.weights.fingerprint import weights_hash

__all__ = ["HTML", "Linked", "Report", "provenance", "weights_hash"]

_PACKAGES = ("interp", "jax", "jaxlib", "equinox", "numpy", "optax", "tokenizers", "gguf", "plotly")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.5em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em;
margin-top: 2em; }
table.kv { border-collapse: collapse; font-size: .9em; } table.kv td, table.kv th { border: 1px solid #ddd;
padding: .25em .6em; text-align: left; vertical-align: top; }
.note { color: #555; } .feature-card { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em;
margin: .8em 0; }
.feature-card h4 { margin: .3em 0; } .ctx { font-family: ui-monospace, monospace; font-size: .85em;
white-space: pre-wrap; margin: .15em 0; }
.ctx-val { display: inline-block; width: 4em; color: #777; } .tok { border-radius: 2px; }
.panel { min-height: 2em; } .hint { color: #777; font-size: .9em; }
"""


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives as such."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=here, capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(model=None, *, model_name: str | None = None, dictionaries: Iterable = (), corpus: str | None = None,
               extra: Mapping | None = None) -> dict:
    """What produced a result: model (name, sizes, weight hash), dictionaries (config, weight hash), corpus,
    package versions, git revision of interp, and the date."""
    out: dict = {}
    if model is not None or model_name:
        m = {"name": model_name or "(unnamed)"}
        if model is not None:
            m.update(layers=model.n_layers, d_model=model.d_model, vocab=model.d_vocab,
                     family=type(model.config).__name__, weights_sha256=weights_hash(model))
        out["model"] = m
    dicts = []
    for d in dictionaries:
        cfg = d.cfg.to_dict() if hasattr(d, "cfg") else {}
        dicts.append({**{k: v for k, v in cfg.items() if v is not None}, "weights_sha256": weights_hash(d)})
    if dicts:
        out["dictionaries"] = dicts
    if corpus:
        out["corpus"] = corpus
    versions = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    out["packages"] = versions
    rev = _git_revision()
    if rev:
        out["git_revision"] = rev
    out["date"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if extra:
        out.update(extra)
    return out


def _kv_table(d: Mapping) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            cell = _kv_table(v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
            cell = "".join(_kv_table(x) for x in v)
        elif isinstance(v, float):
            cell = escape(f"{v:.6g}")
        else:
            cell = escape(str(v))
        rows.append(f"<tr><th>{escape(str(k))}</th><td>{cell}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


class Report:
    """An ordered list of sections written to one self-contained HTML file."""

    def __init__(self, title: str = "interp report"):
        self.title = title
        self.sections: list[tuple[str | None, str | None, list]] = []
        self.meta: dict | None = None

    # ------------------------------------------------------------------ building
    def add(self, item, title: str | None = None, note: str | None = None) -> Report:
        """Add a section: any result the library returns (``PatchResult``, ``LensResult``, ``DLAResult``,
        ``Decomposition``, ``HeadScores``, ``EdgeResult``, ``PromptSet``, ``Graph``, ``Intervention``,
        ``FeatureCard``, ``FeatureIndex``, ``DictionaryMetrics``, ``TrainResult``: its summary table and figures),
        a plotly figure (or FigureWidget), a widget from :mod:`interp.widgets` (its static view), an :class:`HTML`
        fragment, a :class:`Linked` figure, a dict of metrics, plain text, or a list of these."""
        self.sections.append((title, note, self._parts(item)))
        return self

    def add_metrics(self, metrics: Mapping, title: str = "Metrics", note: str | None = None) -> Report:
        """Add a table of named values."""
        return self.add(dict(metrics), title=title, note=note)

    def add_text(self, text: str, title: str | None = None) -> Report:
        """Add paragraphs of text (separated by blank lines), escaped."""
        return self.add(text, title=title)

    def set_provenance(self, meta: Mapping | None = None, **kwargs) -> Report:
        """Provenance shown at the end: a dict, or the arguments of :func:`provenance`."""
        self.meta = dict(meta) if meta is not None else provenance(**kwargs)
        return self

    def _parts(self, item) -> list:
        if isinstance(item, (list, tuple)):
            return [p for x in item for p in self._parts(x)]
        if hasattr(item, "static") and callable(item.static):
            return self._parts(item.static())
        parts = result_view(item)
        if parts is not None:
            return parts
        if isinstance(item, (HTML, Linked)):
            return [item]
        if isinstance(item, Mapping):
            return [HTML(_kv_table(item))]
        if isinstance(item, str):
            return [HTML("".join(f"<p>{escape(p)}</p>" for p in item.split("\n\n")))]
        if hasattr(item, "to_plotly_json"):
            import plotly.graph_objects as go

            return [go.Figure(item.to_plotly_json())]  # a FigureWidget becomes a plain figure
        raise TypeError(f"a report cannot show a {type(item).__name__}: pass a result of the library (PatchResult, "
                        "LensResult, Graph, ...), a plotly figure, a widget, HTML(...), a dict of metrics or text")

    # ------------------------------------------------------------------ rendering
    def to_html(self) -> str:
        """The whole report as one HTML page (plotly.js inlined)."""
        import plotly.io as pio
        from plotly.offline import get_plotlyjs

        body, n = [], 0
        config = {"displaylogo": False, "responsive": True}
        for title, note, parts in self.sections:
            if title:
                body.append(f"<h2>{escape(title)}</h2>")
            if note:
                body.append(f'<p class="note">{escape(note)}</p>')
            for part in parts:
                n += 1
                fid = f"figure-{n}"
                if isinstance(part, HTML):
                    body.append(part.html)
                elif isinstance(part, FigureSpec):  # plain data, drawn without plotly's validation
                    body.append(pio.to_html(dict(part), include_plotlyjs=False, full_html=False, div_id=fid,
                                            config=config, validate=False))
                elif isinstance(part, Linked):
                    panel = f"panel-{n}"
                    panels = _json_for_script({str(k): v for k, v in part.panels.items()})
                    script = (f"(function(){{var panels={panels};"
                              f"var gd=document.getElementById('{fid}');"
                              "gd.on('plotly_click',function(ev){if(!ev.points.length)return;"
                              "var k=String(ev.points[0].customdata);"
                              f"if(k in panels){{document.getElementById('{panel}').innerHTML=panels[k];}}}});}})();")
                    body.append(pio.to_html(part.figure, include_plotlyjs=False, full_html=False, div_id=fid,
                                            config=config, post_script=script))
                    body.append(f'<p class="hint">{escape(part.hint)}</p><div class="panel" id="{panel}"></div>')
                else:
                    body.append(pio.to_html(part, include_plotlyjs=False, full_html=False, div_id=fid, config=config))
        if self.meta:
            body.append("<h2>Provenance</h2>" + _kv_table(self.meta))
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{escape(self.title)}</title><style>{_CSS}</style>"
                f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
                f"<body><h1>{escape(self.title)}</h1>{''.join(body)}</body></html>\n")

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path`` atomically (a complete file or none)."""
        from interp._io import atomic_file

        path = Path(path)
        if path.exists() and path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'report.html'}")
        text = self.to_html()
        with atomic_file(path, "w") as fh:
            fh.write(text)
        return path

    def _repr_html_(self) -> str:  # in a notebook: a summary, not the whole 5 MB page
        titles = "".join(f"<li>{escape(t or '(untitled)')}</li>" for t, _, _ in self.sections)
        return f"<b>{_html.escape(self.title)}</b>: {len(self.sections)} sections<ul>{titles}</ul>"
