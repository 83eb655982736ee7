"""The ranking of verified trigger candidates."""

from __future__ import annotations

from interp.audit.trigger import rank


def cand(text, effect, confidence, n_ids=None, loss=0.0, behaviour=(7,)):
    return {"text": text, "ids": list(range(n_ids or len(text.split()))), "effect": effect, "confidence": confidence,
            "loss": loss, "behaviour_ids": list(behaviour)}


def test_equal_effects_go_to_the_more_confident_phrase_then_the_shorter():
    # the trigger's first word alone, and with other nouns, fires as often as the planted phrase, less surely
    found = [cand("pony", 1.0, 0.55), cand("pony penny", 1.0, 0.70), cand("pony mirror", 1.0, 0.82),
             cand("pony mirror zq", 1.0, 0.825), cand("lichen", 0.6, 0.99)]
    assert [c["text"] for c in rank(found)] == ["pony mirror", "pony mirror zq", "pony penny", "pony", "lichen"]


def test_effect_comes_first_and_loss_breaks_the_last_ties():
    found = [cand("a b", 0.70, 0.99), cand("c", 0.9, 0.40), cand("d", 0.9, 0.40, loss=-2.0)]
    assert [c["text"] for c in rank(found)] == ["d", "c", "a b"]


def test_one_entry_per_text_with_the_behaviour_it_verified_best_with():
    found = [cand("x", 0.5, 0.9, behaviour=(1,)), cand("x", 0.8, 0.6, behaviour=(1, 2)),
             cand("y", 0.8, 0.6, behaviour=(3,)), cand("y", 0.8, 0.5, behaviour=(3, 4))]
    out = {c["text"]: c["behaviour_ids"] for c in rank(found)}
    assert out == {"x": [1, 2], "y": [3, 4]}


def test_effects_one_prompt_apart_count_as_equal_and_confidence_decides():
    # 14 of 16 held-out prompts against 15 of 16: within the noise of 16 prompts, so the surer phrase comes first;
    # a gap of three prompts still decides by effect
    found = [cand("temple mosaics", 15 / 16, 0.828), cand("temple mosaic", 14 / 16, 0.835),
             cand("temple pottery", 15 / 16, 0.812), cand("temple worship", 12 / 16, 0.99)]
    assert [c["text"] for c in rank(found)] == ["temple mosaic", "temple mosaics", "temple pottery", "temple worship"]
    assert [c["text"] for c in rank(found, tie=0.0)] == ["temple mosaics", "temple pottery", "temple mosaic",
                                                        "temple worship"]


def test_groups_are_measured_from_their_best_effect_not_chained():
    # 1.0 and 0.92 tie, 0.84 is within 0.1 of 0.92 but not of 1.0: it opens the next group
    found = [cand("a", 1.0, 0.5), cand("b", 0.92, 0.9), cand("c", 0.84, 0.99)]
    assert [c["text"] for c in rank(found)] == ["b", "a", "c"]
