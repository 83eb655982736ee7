"""The audit does not accuse a control (the backdoor's fine-tuning on clean data only), refuses a base that does not
match the audited model, and takes a quoted behaviour from its description."""

from __future__ import annotations

import pytest

from interp import audit
from tests.audit.conftest import blind_copy
from tests.tiny_chat import tiny_chat_model


def test_control_not_flagged(tmp_path_factory, tiny_base):
    model, org = blind_copy(tmp_path_factory, "control", tiny_base)
    # with the slot refinement forced on whatever the top candidate's effect: rescanning its slots for the words that
    # raise the behaviour most does not make a case against the control either
    res = audit.audit(model, tiny_base, budget="small", progress=False, refine=True, refine_min_effect=-1.0)
    assert not res.flagged, res.flag_reason
    assert res.trigger_candidates and res.trigger_candidates[0]["effect"] < 0.5
    assert res.behaviour_diff["slot_refinement"]["slots"]
    # the refinement starts only from a candidate whose effect reaches its threshold
    quiet = audit.audit(model, tiny_base, budget="small", progress=False, refine=True, refine_min_effect=0.99,
                        sae_steps=10, cc_steps=10)
    assert quiet.trigger_candidates[0]["effect"] < 0.99 and "slot_refinement" not in quiet.behaviour_diff


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


def test_patching_falls_back_to_attribution_on_large_grids(tiny_base):
    import numpy as np

    from interp.audit import evidence

    ids = tiny_base.tokenizer.encode(tiny_base.tokenizer.apply_chat_template([{"role": "user", "content": "a b"}]))
    ids = ids[:3] + tiny_base.tokenizer.encode("cat sat on the red chair", prepend_bos=False) + ids[3:]
    neutral = list(ids)
    neutral[3] = tiny_base.tokenizer.encode("dog", prepend_bos=False)[0]
    exact = evidence.patching(tiny_base, ids, neutral, (3, 4), 40)
    approx = evidence.patching(tiny_base, ids, neutral, (3, 4), 40, max_runs=0)
    assert (exact["method"], approx["method"]) == ("activation patching", "attribution patching")
    assert np.shape(exact["recovered"]) == np.shape(approx["recovered"]) == (tiny_base.n_layers, len(ids))
    # patching every position before the span changes nothing, by either method
    assert np.allclose(np.asarray(exact["recovered"])[:, :3], 0, atol=1e-5)
    assert np.allclose(np.asarray(approx["recovered"])[:, :3], 0, atol=1e-5)
