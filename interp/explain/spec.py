"""Explainers named by a short spec, as the command line and the demo take them."""

from __future__ import annotations

import re

EXPLAINER_SPECS = ("baseline, local, local:MODEL (a packaged name, checkpoint folder or .gguf file), "
                   "openai:MODEL@BASE_URL")


def parse_explainer(text: str) -> tuple[str, str | None, str | None]:
    """``("baseline", None, None)``, ``("local", NAME or None, None)`` or ``("openai", MODEL, BASE_URL)`` for an
    explainer spec; ValueError naming the accepted forms otherwise."""
    text = (text or "").strip()
    if text == "baseline":
        return "baseline", None, None
    if text == "local" or text.startswith("local:"):
        name = text.removeprefix("local").removeprefix(":").strip()
        if text.startswith("local:") and not name:
            raise ValueError(f"{text!r} names no model after 'local:'; accepted: {EXPLAINER_SPECS}")
        return "local", name or None, None
    if text.startswith("openai:"):
        m = re.fullmatch(r"openai:([^@\s][^\s]*?)@(https?://\S+)", text)
        if not m:
            raise ValueError(f"{text!r} is not openai:MODEL@BASE_URL, such as "
                             "openai:gpt-4o-mini@https://api.openai.com/v1 or "
                             "openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1")
        return "openai", m.group(1), m.group(2)
    raise ValueError(f"unknown explainer {text!r}; accepted: {EXPLAINER_SPECS}")


def backend_from_spec(spec, *, model=None, model_name: str | None = None, api_key_env: str | None = None):
    """The chat backend an explainer spec (text or :func:`parse_explainer`'s tuple) names, or None for the
    baseline: ``local`` is the instruct ``model`` itself, ``local:NAME`` is ``interp.load(NAME)`` (``model`` when
    NAME is ``model_name``), ``openai:MODEL@BASE_URL`` an OpenAI-compatible server whose key, if any, is in the
    environment variable ``api_key_env`` (a missing key fails here, before other work). ``model`` may be None
    for the baseline and openai forms."""
    from interp.explain.backends import OpenAICompatible
    from interp.explain.local import LocalModel

    kind, name, url = parse_explainer(spec) if isinstance(spec, str) else spec
    if api_key_env is not None and kind != "openai":
        raise ValueError(f"an API key variable is for an openai:MODEL@BASE_URL explainer, not {kind}; leave it out")
    if kind == "baseline":
        return None
    if kind == "openai":
        return OpenAICompatible(url, name, api_key_env=api_key_env)
    if name and name != model_name:
        import interp

        return LocalModel(interp.load(name), label=name)
    if model is None:
        raise ValueError("the explainer 'local' uses the loaded model; none was given")
    return LocalModel(model, label=name or model_name)


def explainer_from_spec(spec, *, model=None, model_name: str | None = None, api_key_env: str | None = None):
    """``(explainer, backend)`` for an explainer spec: the :class:`~interp.explain.Baseline` (backend None), or an
    :class:`~interp.explain.LLMExplainer` over :func:`backend_from_spec`'s backend."""
    from interp.explain.explainers import Baseline, LLMExplainer

    backend = backend_from_spec(spec, model=model, model_name=model_name, api_key_env=api_key_env)
    return (Baseline() if backend is None else LLMExplainer(backend)), backend
