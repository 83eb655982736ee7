"""The main job on small settings: every stage runs on the default model and the report holds each section."""

from __future__ import annotations

import io

import pytest

from interp.cli import main
from interp.demo import DemoConfig, run


@pytest.mark.slow
def test_demo_writes_a_complete_report(default_model, tmp_path):
    out = io.StringIO()
    cfg = DemoConfig(out=str(tmp_path / "report.html"), sae_tokens=4096, sae_batch=512, sae_width=256, sae_k=8,
                     dashboard_contexts=8, n_dashboards=3, ioi_prompts=1, graph=False)
    path = run(cfg, out=out)
    log = out.getvalue()
    for i in range(1, 6):
        assert f"[{i}/5]" in log
    assert "report: " in log and str(path.resolve()) in log
    html = path.read_text()
    assert path.stat().st_size > 3_000_000
    for title in ("Logit lens and direct logit attribution", "Induction heads", "Indirect object identification",
                  "Residual stream patching", "Head output patching", "The circuit traced by edge attribution",
                  "SAE training on blocks.15.hook_resid_post", "Feature dashboards", "Automated explanations",
                  "shuffled control", "Provenance",
                  "weights_sha256"):
        assert title in html, title
    assert html.count('class="feature-card"') == 3
    # every dashboard carries its explanation (the baseline's token pattern) and scores
    assert "latents explained (baseline)" in log
    assert html.count('<p class="explanation">') == 3 and "detection" in html
    assert not list(tmp_path.glob(".report.html.partial-*"))


def test_demo_command_explains_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit, match="is a folder"):
        main(["demo", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no transcoders"):
        main(["demo", "--out", str(tmp_path / "r.html"), "--transcoders", str(tmp_path / "missing")])
