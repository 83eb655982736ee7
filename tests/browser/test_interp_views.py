"""What a person sees: an interp report opened in headless Chromium with the network blocked, and the
quickstart notebook run in JupyterLab with its widgets answering from the kernel. Screenshots go to
tests/artifacts/screenshots/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .harness import open_offline, require_modules, run_notebook_in_lab

EVIL = "<script>alert(1)</script>"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report_path(tiny3, tmp_path_factory):
    from interp.circuits import patch
    from interp.circuits.graph import prune, trace
    from interp.features import FeatureCard, graph_cards
    from interp.report import Report
    from interp.viz import attention_figure, views
    from tests.conftest import random_tokens, random_transcoders

    prompt = random_tokens(tiny3.d_vocab, (1, 7), seed=4)
    corrupted = prompt.copy()
    corrupted[0, 2] = (corrupted[0, 2] + 9) % tiny3.d_vocab
    tc = random_transcoders(tiny3)
    graph = prune(trace(tiny3, tc, prompt[0], max_logits=3))
    cards = graph_cards(tiny3, tc, graph, random_tokens(tiny3.d_vocab, (6, 10), seed=6))
    evil_card = FeatureCard(7, f"latent 7 {EVIL}", 0.01, 3, 2.0, [
        {"tokens": ["a", EVIL, "b"], "acts": [0.0, 2.0, 0.5], "center": 1, "value": 2.0, "row": 0, "pos": 1}],
        np.array([1, 2]), np.array([0.0, 1.0, 2.0]), [(EVIL, 0.3)], [("x", -0.2)])
    r = Report("browser check")
    r.add(attention_figure(["<bos>", EVIL, " b", " c"], np.tril(np.ones((2, 4, 4))) / np.arange(1, 5)[:, None]),
          title="attention")
    r.add(patch(tiny3, prompt, corrupted, lambda lg: lg[:, -1, 3].mean(), "resid_pre"), title="patching")
    r.add(evil_card, title="card")
    r.add(views.graph_view(graph, cards), title="graph")
    path = tmp_path_factory.mktemp("report") / "report.html"
    r.save(path)
    return path, graph, cards


def test_report_renders_offline(context, report_path, artifacts):
    path, graph, cards = report_path
    events = open_offline(context, path)
    page = events.page
    plots = page.locator(".js-plotly-plot")
    # attention, patching, card histogram + logit effects, graph
    n_figures = 5
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_figures}")
    assert plots.count() == n_figures
    assert page.locator(".js-plotly-plot .heatmaplayer .hm image").count() >= 2  # attention and patching drawn
    ticks = plots.nth(0).locator(".xtick text").all_text_contents()
    assert any(EVIL in t for t in ticks), ticks  # the token is shown as text
    card_text = page.locator(".feature-card").first.inner_text()
    assert EVIL in card_text
    assert page.locator(".feature-card script").count() == 0
    # the graph: one marker per kept node
    graph_plot = plots.nth(4)
    n_points = graph_plot.locator(".scatterlayer .trace .points path").count()
    assert n_points == len(graph.kept())
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    events.assert_clean()  # no dialog (alert), no request left the machine, no script error


def test_report_graph_click_shows_the_feature_card(context, report_path, artifacts):
    path, graph, cards = report_path
    events = open_offline(context, path)
    page = events.page
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5")
    gd = page.locator(".js-plotly-plot").nth(4)
    gd.scroll_into_view_if_needed()
    # the trace named "feature": click its first marker where a person would
    feature_trace = page.evaluate("""() => {
        const gd = document.querySelectorAll('.js-plotly-plot')[4];
        return gd.data.findIndex(t => t.name === 'feature');
    }""")
    node = page.evaluate(f"() => document.querySelectorAll('.js-plotly-plot')[4].data[{feature_trace}].customdata[0]")
    marker = gd.locator(".scatterlayer .trace").nth(feature_trace).locator(".points path").first
    box = marker.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    gd.locator(".hoverlayer .hovertext").first.wait_for()  # plotly knows which point is under the mouse
    page.mouse.click(x, y)
    panel = page.locator(".panel .feature-card")
    panel.wait_for()
    assert panel.get_attribute("data-latent") == str(cards[int(node)].latent)
    assert graph.label(int(node)) in panel.locator("h4").inner_text()
    gd.screenshot(path=str(artifacts / "report_graph_clicked.png"))
    events.assert_clean()


@pytest.mark.slow
def test_quickstart_notebook_in_jupyterlab(context, jupyterlab, artifacts, default_model):
    require_modules("ipywidgets", "anywidget", "plotly")
    page = run_notebook_in_lab(context, jupyterlab, ROOT / "notebooks" / "01_quickstart.ipynb", timeout=300)
    outputs = page.locator(".jp-NotebookPanel .jp-OutputArea-output")
    # AttentionView: a layer slider, a head menu and a plotly figure, all rendered by the widget manager
    slider = outputs.locator(".widget-slider").first
    slider.wait_for()
    assert slider.locator(".widget-label").inner_text() == "layer"
    plot = outputs.locator(".js-plotly-plot").first
    plot.wait_for()
    page.wait_for_function("document.querySelector('.jp-OutputArea-output .js-plotly-plot .main-svg') !== null")
    # the title is drawn after the figure's frame; under a full test run a 30 s wait for it once ran out
    page.wait_for_function("""() => {
        const t = document.querySelector('.jp-OutputArea-output .js-plotly-plot .gtitle');
        return t && t.textContent.includes('L9H0');
    }""", timeout=90_000)
    # choosing another head in the browser runs the kernel's callback, which redraws the figure
    head_menu = outputs.locator(".widget-dropdown select").first
    head_menu.select_option(label="head 3")
    page.wait_for_function("""() => {
        const t = document.querySelector('.jp-OutputArea-output .js-plotly-plot .gtitle');
        return t && t.textContent.includes('L9H3');
    }""", timeout=60_000)
    assert outputs.locator(".js-plotly-plot").count() >= 3  # attention, logit lens and DLA figures
    plot.scroll_into_view_if_needed()  # the picture shows the attention widget, not the end of the tour
    page.screenshot(path=str(artifacts / "jupyterlab_quickstart.png"), full_page=True)
