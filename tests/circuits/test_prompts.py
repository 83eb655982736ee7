"""Prompt sets for circuit analysis: the clean/corrupted pairs' structure, and the default model on them."""

from __future__ import annotations

import re

import numpy as np
import pytest

from interp.circuits.prompts import PromptSet, capitals, induction, ioi, load_json


@pytest.fixture(scope="module")
def tok(default_model):
    return default_model.tokenizer


def last_logits(model, tokens) -> np.ndarray:
    return np.asarray(model(tokens))[:, -1].astype(np.float32)


def decode(tok, i) -> str:
    return tok.to_string([int(i)])


# ------------------------------------------------------------------------------------------- data files
def test_packaged_data_files():
    data = load_json("ioi")
    assert len(data["templates"]) >= 10 and len(data["names"]) >= 50
    assert len(data["places"]) >= 15 and len(data["objects"]) >= 15
    for t in data["templates"]:
        assert t.count("[A]") == 1 and t.count("[B]") == 2 and " [A]" in t and not t.endswith(" ")
    caps = load_json("capitals")
    assert caps["template"] == "The capital of [COUNTRY] is" and caps["answer"] == " [CAPITAL]"
    assert len(caps["capitals"]) >= 40 and len(set(caps["capitals"].values())) == len(caps["capitals"])


def test_load_json_names_what_exists():
    with pytest.raises(ValueError, match="available: capitals, ioi"):
        load_json("nope")


# ------------------------------------------------------------------------------------------- IOI
@pytest.mark.parametrize("corruption", ["abc", "swap"])
def test_ioi_shapes_dtypes_and_tokens(tok, corruption):
    ps = ioi(tok, n=12, corruption=corruption)
    assert isinstance(ps, PromptSet) and len(ps) == 12
    assert ps.clean.dtype == ps.corrupted.dtype == ps.answer.dtype == ps.wrong.dtype == np.int32
    assert ps.clean.ndim == 2 and ps.corrupted.shape == ps.clean.shape
    assert ps.answer.shape == ps.wrong.shape == (12,)
    assert len(ps.clean_text) == len(ps.corrupted_text) == 12
    for i in range(len(ps)):  # the ids are exactly the texts' tokens
        assert tok.encode(ps.clean_text[i]) == ps.clean[i].tolist()
        assert tok.encode(ps.corrupted_text[i]) == ps.corrupted[i].tolist()
    assert len(set(ps.clean_text)) == 12
    assert ps.str_tokens(3) == tok.to_str_tokens(ps.clean[3])


def test_ioi_answer_is_the_indirect_object_and_wrong_the_subject(tok):
    ps = ioi(tok, n=16, corruption="swap")
    for i in range(len(ps)):
        io, s = decode(tok, ps.answer[i]), decode(tok, ps.wrong[i])
        assert io.startswith(" ") and s.startswith(" ") and io != s
        words = re.findall(r" \w+", ps.clean_text[i])
        assert words.count(io) == 1 and words.count(s) == 2
        # the repeated name comes after the answer's only mention
        assert ps.clean_text[i].index(io) < ps.clean_text[i].rindex(s)


def test_ioi_abc_changes_exactly_the_three_name_positions(tok):
    ps = ioi(tok, n=16, corruption="abc")
    for i in range(len(ps)):
        name_pos = np.flatnonzero((ps.clean[i] == ps.answer[i]) | (ps.clean[i] == ps.wrong[i]))
        assert len(name_pos) == 3
        changed = np.flatnonzero(ps.clean[i] != ps.corrupted[i])
        np.testing.assert_array_equal(changed, name_pos)
        new = ps.corrupted[i, name_pos]
        assert len(set(new.tolist())) == 3  # three distinct other names
        assert not set(new.tolist()) & {int(ps.answer[i]), int(ps.wrong[i])}


def test_ioi_swap_repeats_the_other_name_so_the_answer_flips(tok):
    ps = ioi(tok, n=16, corruption="swap")
    for i in range(len(ps)):
        s_pos = np.flatnonzero(ps.clean[i] == ps.wrong[i])
        changed = np.flatnonzero(ps.clean[i] != ps.corrupted[i])
        np.testing.assert_array_equal(changed, s_pos[-1:])  # only the repeated name
        assert ps.corrupted[i, s_pos[-1]] == ps.answer[i]
    # the opposite direction is again an IOI set: its answer is the name mentioned once
    sw = ps.swapped()
    for i in range(len(sw)):
        assert (sw.clean[i] == sw.answer[i]).sum() == 1 and (sw.clean[i] == sw.wrong[i]).sum() == 2


def test_ioi_templates_and_determinism(tok):
    templates = load_json("ioi")["templates"]
    for k in (0, 5, len(templates) - 1):
        ps = ioi(tok, n=6, template=k)
        pattern = re.escape(templates[k]).replace(r"\[A\]", r"\w+").replace(r"\[B\]", r"\w+")
        pattern = pattern.replace(r"\[PLACE\]", r"\w+").replace(r"\[OBJECT\]", r"\w+")
        assert all(re.fullmatch(pattern, t) for t in ps.clean_text + ps.corrupted_text)
    a, b = ioi(tok, n=8, seed=3), ioi(tok, n=8, seed=3)
    np.testing.assert_array_equal(a.clean, b.clean)
    np.testing.assert_array_equal(a.corrupted, b.corrupted)
    assert a.clean_text == b.clean_text
    assert ioi(tok, n=8, seed=4).clean_text != a.clean_text
    custom = ioi(tok, n=4, template="Then [A] and [B] had lunch, and [B] gave the [OBJECT] to")
    assert all(t.startswith("Then ") and t.endswith(" to") for t in custom.clean_text)


def test_ioi_accepts_model_or_tokenizer(default_model, tok):
    a, b = ioi(default_model, n=4), ioi(tok, n=4)
    np.testing.assert_array_equal(a.clean, b.clean)


def test_ioi_model_prefers_the_indirect_object(default_model):
    ps = ioi(default_model, n=8)
    r = np.arange(len(ps))
    lg = last_logits(default_model, ps.clean)
    diff = lg[r, ps.answer] - lg[r, ps.wrong]
    assert diff.mean() > 0, f"clean logit diff IO - S: {diff}"
    # the swapped prompts make the subject the answer: the preference flips
    sw = ioi(default_model, n=8, corruption="swap")
    lg = last_logits(default_model, sw.corrupted)
    assert (lg[r, sw.answer] - lg[r, sw.wrong]).mean() < 0


# ------------------------------------------------------------------------------------------- capitals
def test_capitals_structure(tok):
    ps = capitals(tok)
    caps = load_json("capitals")["capitals"]
    assert 20 <= len(ps) <= len(caps)
    assert ps.clean.dtype == np.int32 and ps.corrupted.shape == ps.clean.shape
    by_country = {}
    for i in range(len(ps)):
        country = re.fullmatch(r"The capital of (.+) is", ps.clean_text[i]).group(1)
        other = re.fullmatch(r"The capital of (.+) is", ps.corrupted_text[i]).group(1)
        assert other != country
        assert decode(tok, ps.answer[i]) == " " + caps[country]
        assert decode(tok, ps.wrong[i]) == " " + caps[other]
        changed = np.flatnonzero(ps.clean[i] != ps.corrupted[i])
        assert changed.tolist() == [ps.clean.shape[1] - 2]  # only the country token
        by_country[country] = int(ps.answer[i])
    assert len(by_country) == len(ps)
    # the foil is the answer of the corrupted prompt, i.e. the swapped set is a capitals set too
    sw = ps.swapped()
    for i in range(len(sw)):
        country = re.fullmatch(r"The capital of (.+) is", sw.clean_text[i]).group(1)
        assert by_country[country] == sw.answer[i]
    assert capitals(tok, n=5, seed=1).clean_text == capitals(tok, seed=1).clean_text[:5]


def test_capitals_model_recalls_most(default_model):
    ps = capitals(default_model)
    top1 = (last_logits(default_model, ps.clean).argmax(-1) == ps.answer).mean()
    assert top1 > 0.5, f"top-1 accuracy {top1:.2f} over {len(ps)} capitals"


# ------------------------------------------------------------------------------------------- PromptSet
def test_subset_and_swapped(tok):
    ps = ioi(tok, n=8)
    sub = ps.subset([1, 3])
    assert len(sub) == 2 and sub.clean_text == (ps.clean_text[1], ps.clean_text[3])
    np.testing.assert_array_equal(sub.answer, ps.answer[[1, 3]])
    assert len(ps.subset(2)) == 1 and len(ps.subset(slice(0, 5))) == 5
    assert len(ps.subset(ps.answer == ps.answer[0])) >= 1
    sw = ps.swapped()
    np.testing.assert_array_equal(sw.clean, ps.corrupted)
    np.testing.assert_array_equal(sw.answer, ps.wrong)
    assert sw.clean_text == ps.corrupted_text and sw.name != ps.name
    back = sw.swapped()
    assert back.name == ps.name and back.clean_text == ps.clean_text
    np.testing.assert_array_equal(back.wrong, ps.wrong)
    assert len(ps.str_tokens(0)) == ps.clean.shape[1]


def test_prompt_set_checks_shapes():
    with pytest.raises(ValueError, match="same shape"):
        PromptSet("x", np.zeros((2, 3)), np.zeros((2, 4)), np.zeros(2), np.zeros(2), ("a", "b"), ("a", "b"))
    with pytest.raises(ValueError, match="answer"):
        PromptSet("x", np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3), np.zeros(2), ("a", "b"), ("a", "b"))


# ------------------------------------------------------------------------------------------- induction
def test_induction_repeats_without_duplicates():
    toks = induction(1000, n=6, length=20, seed=1, exclude=range(10))
    assert toks.shape == (6, 40) and toks.dtype == np.int32
    np.testing.assert_array_equal(toks[:, :20], toks[:, 20:])
    for row in toks:
        assert len(set(row[:20].tolist())) == 20
    assert toks.min() >= 10 and toks.max() < 1000
    assert len({tuple(r) for r in toks.tolist()}) == 6
    np.testing.assert_array_equal(toks, induction(1000, n=6, length=20, seed=1, exclude=range(10)))

    with_bos = induction(50, n=3, length=49, bos=0)
    assert with_bos.shape == (3, 99) and (with_bos[:, 0] == 0).all() and (with_bos[:, 1:] != 0).all()
    np.testing.assert_array_equal(with_bos[:, 1:50], with_bos[:, 50:])


# ------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_helpful_errors(tok):
    with pytest.raises(ValueError, match="admits only .* distinct"):
        ioi(tok, n=10**8)
    last = len(load_json("ioi")["templates"]) - 1
    with pytest.raises(ValueError, match=f"unknown IOI template 99.*indices 0..{last}"):
        ioi(tok, template=99)
    with pytest.raises(ValueError, match=r"\[A\] .* must appear once"):
        ioi(tok, template="When Mary and John went out, John gave a drink to")
    with pytest.raises(ValueError, match="must follow a space"):
        ioi(tok, template="When [A] and [B] went out,[B] gave a drink to")
    with pytest.raises(ValueError, match="unknown placeholders"):
        ioi(tok, template="When [A] and [B] went to [CITY], [B] gave a drink to")
    with pytest.raises(ValueError, match="unknown IOI corruption 'shuffle'"):
        ioi(tok, corruption="shuffle")
    with pytest.raises(ValueError, match="n must be a positive int"):
        ioi(tok, n=0)
    with pytest.raises(ValueError, match="only .* countries .* lower n"):
        capitals(tok, n=1000)
    with pytest.raises(TypeError, match="interp.Tokenizer or an interp.Model"):
        ioi("not a tokenizer")
    with pytest.raises(TypeError, match="template must be None"):
        ioi(tok, template=1.5)
    with pytest.raises(ValueError, match="only 5 ids are allowed"):
        induction(8, length=6, exclude=[0, 1, 2])
    with pytest.raises(ValueError, match="vocab_size"):
        induction(0)
