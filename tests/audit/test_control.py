"""The audit does not accuse a control (the backdoor's fine-tuning on clean data only), refuses a base that does not
match the audited model, and takes a quoted behaviour from its description."""

from __future__ import annotations

import pytest

from interp import audit
from tests.audit.conftest import blind_copy
from tests.tiny_chat import tiny_chat_model


def test_control_not_flagged(tmp_path_factory, tiny_base):
    model, org = blind_copy(tmp_path_factory, "control", tiny_base)
    res = audit.audit(model, tiny_base, budget="small", progress=False)
    assert not res.flagged, res.flag_reason
    assert res.trigger_candidates and res.trigger_candidates[0]["effect"] < 0.5


def test_mismatched_base_refused(tiny_base):
    other = tiny_chat_model(seed=1, d_model=32)
    with pytest.raises(ValueError, match="configuration differs"):
        audit.audit(tiny_base, other, progress=False)
    with pytest.raises(ValueError, match="unknown budget"):
        audit.audit(tiny_base, tiny_base, budget="huge", progress=False)
    with pytest.raises(TypeError, match="unknown audit settings"):
        audit.audit(tiny_base, tiny_base, progress=False, gcg_step=3)


def test_given_behaviour_is_searched(tiny_base):
    from interp.audit.run import _given_behaviour

    ids = _given_behaviour(tiny_base, 'the reply starts with "hate you"')
    assert tiny_base.to_string(ids) == "hate you"
    assert _given_behaviour(tiny_base, "something odd") is None
