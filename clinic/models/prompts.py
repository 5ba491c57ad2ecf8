"""Positive / negative text prompts per label, for zero-shot scoring through the report encoder.

Zero-shot scoring asks which of two sentences — the finding stated, the finding denied — a case's
embedding is closer to. Prompts exist in English and, for the ECG superclasses, in German (most
PTB-XL reports are German); an unknown label falls back to its name, stated and denied.
"""

from __future__ import annotations

PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "NORM": (("normal ECG", "sinus rhythm, normal ECG", "sinusrhythmus normales ekg"),
             ("abnormal ECG", "pathological ECG", "pathologisches ekg")),
    "MI": (("myocardial infarction", "old infarction, Q waves", "infarkt"),
           ("no infarction", "no signs of infarction", "kein infarkt")),
    "STTC": (("ST-T changes, repolarisation abnormality", "ST depression, T wave inversion",
              "st-strecken-senkung, t-negativierung"),
             ("normal ST segments and T waves", "no repolarisation abnormality",
              "keine erregungsrückbildungsstörung")),
    "CD": (("conduction disturbance, bundle branch block", "AV block",
            "schenkelblock"),
           ("normal conduction", "no conduction disturbance", "keine leitungsstörung")),
    "HYP": (("ventricular hypertrophy", "left ventricular hypertrophy", "linksherzhypertrophie"),
            ("no hypertrophy", "normal voltage", "keine hypertrophie")),
    "heart_failure": (("heart failure, cardiomegaly and pulmonary edema",),
                      ("no heart failure, normal heart size, no edema",)),
    "atrial_fibrillation": (("atrial fibrillation, irregularly irregular rhythm",),
                            ("sinus rhythm, regular rhythm",)),
    "myocardial_infarction": (("myocardial infarction, ST elevation, Q waves",),
                              ("no infarction, no ST elevation",)),
    "pneumonia": (("pneumonia, consolidation",), ("no consolidation, clear lungs",)),
    "pleural_effusion": (("pleural effusion",), ("no pleural effusion",)),
    "left_ventricular_hypertrophy": (("left ventricular hypertrophy, high voltage",),
                                     ("no hypertrophy, normal voltage",)),
    "no_finding": (("no acute findings, normal study",), ("abnormal findings",)),
}  # fmt: skip


def prompts_for(label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positive sentences, negative sentences) for ``label``."""
    if label in PROMPTS:
        return PROMPTS[label]
    words = label.replace("_", " ")
    return (words,), (f"no {words}",)
