"""Zero-shot prompts: known labels have their sentences, unknown ones fall back to their name."""

from __future__ import annotations

import pytest

from clinic.models.prompts import PROMPTS, prompts_for


def test_known_labels_use_their_sentences() -> None:
    positives, negatives = prompts_for("MI")
    assert positives == PROMPTS["MI"][0] and negatives == PROMPTS["MI"][1]
    assert "kein infarkt" in negatives  # German prompts for the PTB-XL superclasses


@pytest.mark.parametrize(
    ("label", "stated", "denied"),
    [
        ("sinus_tachycardia", "sinus tachycardia", "no sinus tachycardia"),
        ("Cardiomegaly", "Cardiomegaly", "no Cardiomegaly"),
    ],
)
def test_an_unknown_label_is_stated_and_denied_by_name(
    label: str, stated: str, denied: str
) -> None:
    assert prompts_for(label) == ((stated,), (denied,))


def test_every_prompt_set_has_both_sides() -> None:
    for label, (positives, negatives) in PROMPTS.items():
        assert positives and negatives, label
        assert not set(positives) & set(negatives), label
