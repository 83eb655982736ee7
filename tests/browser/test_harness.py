"""The browser harness itself: an offline plotly page, the offline recorder, and a notebook run in JupyterLab."""

from __future__ import annotations

import html

import pytest

from .harness import open_offline, page_events, require_modules, run_notebook_in_lab

PAYLOAD = "<script>alert(1)</script>"


def test_offline_plotly_page_renders(context, artifacts, tmp_path):
    require_modules("plotly")
    import plotly.graph_objects as go
    import plotly.io as pio

    labels = ["first", html.escape(PAYLOAD), "third"]
    fig = go.Figure(go.Heatmap(z=[[1, 2, 3], [3, 1, 2]], x=labels, y=["r0", "r1"]))
    fig.update_layout(width=700, height=400, title="offline heatmap")
    page_path = tmp_path / "heatmap.html"
    page_path.write_text(pio.to_html(fig, include_plotlyjs=True, full_html=True), encoding="utf-8")

    events = open_offline(context, page_path)
    page = events.page
    page.wait_for_selector(".js-plotly-plot .main-svg")
    # The heatmap trace is drawn as an <image> inside its layer.
    page.wait_for_selector(".js-plotly-plot .heatmaplayer .hm image", state="attached")

    ticks = page.locator(".js-plotly-plot .xtick text").all_text_contents()
    assert any(PAYLOAD in t for t in ticks), ticks  # shown as text, never parsed as markup
    assert page.locator(".js-plotly-plot script").count() == 0

    page.screenshot(path=str(artifacts / "offline_plotly_heatmap.png"), full_page=True)
    events.assert_clean()


def test_open_offline_records_what_it_blocks(context, tmp_path):
    # The recorder must see every kind of problem the other tests assert is absent.
    page_path = tmp_path / "noisy.html"
    page_path.write_text("""<!doctype html><html><body>
<img src="https://example.invalid/pixel.png">
<script>
  fetch("http://example.invalid/api").catch(() => {});
  try { new WebSocket("wss://example.invalid/socket"); } catch (e) {}
  console.error("noisy console");
  alert("noisy alert");
  setTimeout(() => { throw new Error("noisy throw"); }, 0);
</script></body></html>""", encoding="utf-8")

    events = open_offline(context, page_path)
    events.page.wait_for_function("() => document.readyState === 'complete'")
    problems = events.problems()
    assert set(problems) == {"blocked requests", "console errors", "page errors", "dialogs"}, problems
    assert {"https://example.invalid/pixel.png", "http://example.invalid/api",
            "wss://example.invalid/socket"} <= set(events.blocked)
    assert any("noisy console" in m for m in events.console_errors)
    assert events.dialogs == ["alert: noisy alert"]
    assert any("noisy throw" in e for e in events.page_errors)
    # a tolerated console message is left out of the verdict, and nothing else is
    with pytest.raises(AssertionError) as failed:
        events.assert_clean(tolerated_console_errors=("noisy console",))
    assert "noisy console" not in str(failed.value)
    assert "noisy alert" in str(failed.value) and "noisy throw" in str(failed.value)


def test_jupyterlab_renders_widget(context, jupyterlab, artifacts, tmp_path):
    # plotly's FigureWidget is an anywidget: it needs anywidget and its lab extension in the environment.
    require_modules("nbformat", "ipywidgets", "plotly", "anywidget")
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('import ipywidgets as w\ns = w.IntSlider(value=7, description="probe")\ns'),
        nbformat.v4.new_code_cell('import plotly.graph_objects as go\n'
                                  'fig = go.FigureWidget(go.Bar(x=["a", "b", "c"], y=[1, 3, 2]))\nfig'),
    ]
    nb_path = tmp_path / "widgets.ipynb"
    nbformat.write(nb, nb_path)

    page = run_notebook_in_lab(context, jupyterlab, nb_path, timeout=60)

    outputs = page.locator(".jp-NotebookPanel .jp-OutputArea-output")
    slider = outputs.locator(".widget-slider").first
    slider.wait_for()
    assert slider.locator(".widget-label").inner_text() == "probe"
    assert slider.locator(".widget-readout").inner_text().strip() == "7"

    plot = outputs.locator(".js-plotly-plot").first
    plot.wait_for()
    bars = plot.locator(".barlayer .point")
    bars.first.wait_for(state="attached")
    assert bars.count() == 3

    page.screenshot(path=str(artifacts / "jupyterlab_widgets.png"))
    # jupyterlab-manager looks a widget model up by polling for at most 2 s, then logs "widget model not found";
    # on a loaded machine a model can take longer to arrive over the kernel's channel. Both widgets were checked
    # above to render in full, so that message alone is not a failure.
    page_events(page).assert_clean(tolerated_console_errors=("widget model not found",))
