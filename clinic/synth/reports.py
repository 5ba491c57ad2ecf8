"""Free-text radiology and ECG reports with the habits of real ones.

A report reads the *modality's* evidence (what the film or tracing shows), not the truth, and
phrases each finding by how strongly it reads: affirmed (with synonyms), hedged ("possible",
"cannot exclude"), negated ("no pleural effusion") or not mentioned. A share of reports is wrong:
it misses a visible finding or invents an absent one; :func:`apply_errors` says which.
Every string here is Latin-1 encodable, so a report can be written in either encoding.
"""

from __future__ import annotations

import numpy as np

from clinic.synth.identity import pick

Phrases = dict[str, tuple[str, ...]]

RADIOLOGY: dict[str, Phrases] = {
    "cardiomegaly": {
        "pos": ("The cardiac silhouette is enlarged.", "Cardiomegaly.",
                "Enlarged cardiac silhouette.", "The heart is enlarged."),
        "hedged": ("The heart size is at the upper limit of normal; possible mild cardiomegaly.",
                   "Borderline enlarged cardiac silhouette, cannot exclude cardiomegaly."),
        "neg": ("Heart size is normal.", "No cardiomegaly.",
                "The cardiac silhouette is within normal limits."),
    },
    "pleural_effusion": {
        "pos": ("{size} {side} pleural effusion.",
                "Blunting of the {side} costophrenic angle consistent with {size_l} effusion.",
                "{size} {side} pleural effusion with basal opacity."),
        "hedged": ("Possible small {side} pleural effusion.",
                   "Blunting of the {side} costophrenic angle; cannot exclude a small effusion."),
        "neg": ("No pleural effusion.", "No effusion or pneumothorax.",
                "The costophrenic angles are sharp."),
    },
    "consolidation": {
        "pos": ("Focal consolidation in the {lobe} lobe.",
                "Airspace disease in the {lobe} lobe, compatible with pneumonia.",
                "Patchy opacity in the {lobe} lobe concerning for pneumonia."),
        "hedged": ("Subtle opacity in the {lobe} lobe, atelectasis versus early pneumonia.",
                   "Cannot exclude early airspace disease in the {lobe} lobe.",
                   "Possible {lobe} lobe consolidation."),
        "neg": ("No focal consolidation.", "No airspace disease.", "No focal airspace opacity."),
    },
    "edema": {
        "pos": ("Perihilar haziness consistent with pulmonary edema.",
                "Interstitial pulmonary edema.",
                "Pulmonary vascular congestion with perihilar edema."),
        "hedged": ("Possible mild interstitial edema.",
                   "Mild vascular congestion; early edema cannot be excluded."),
        "neg": ("No pulmonary edema.", "No vascular congestion or edema."),
    },
}  # fmt: skip
RADIOLOGY_IMPRESSION: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly.", "Enlarged cardiac silhouette."),
    "pleural_effusion": ("{size} {side} pleural effusion.",),
    "consolidation": ("{lobe} lobe consolidation, compatible with pneumonia.",
                      "Airspace disease in the {lobe} lobe."),
    "edema": ("Pulmonary edema.", "Mild interstitial edema, consistent with fluid overload."),
}  # fmt: skip

ECG: dict[str, Phrases] = {
    "af": {
        "pos": ("Atrial fibrillation with a ventricular rate of {rate} bpm.", "AFib.",
                "Irregularly irregular rhythm without discernible P waves, consistent with "
                "atrial fibrillation."),
        "hedged": ("Irregular rhythm; possible atrial fibrillation.",
                   "Cannot exclude atrial fibrillation; P waves poorly seen."),
        "neg": ("{sinus}.",),
    },
    "st_elevation": {
        "pos": ("ST elevation in {leads}, consistent with acute {territory} myocardial infarction.",
                "ST-segment elevation in {leads} (STEMI, {territory})."),
        "hedged": ("Nonspecific ST changes in {leads}; cannot exclude ischemia.",
                   "Possible ST elevation in {leads}."),
        "neg": ("No acute ST-segment changes.", "No ST elevation."),
    },
    "q_waves": {
        "pos": ("Pathological Q waves in {leads}, suggestive of prior {territory} infarct.",
                "Q waves in {leads}, old {territory} MI."),
        "hedged": ("Small Q waves in {leads}, possibly old {territory} infarct.",),
        "neg": ("No pathological Q waves.",),
    },
    "lvh_voltage": {
        "pos": ("Left ventricular hypertrophy by voltage criteria.",
                "LVH with secondary repolarization abnormality.",
                "Increased QRS voltage consistent with LVH."),
        "hedged": ("Borderline voltage criteria for LVH.",
                   "Possible left ventricular hypertrophy."),
        "neg": ("No LVH by voltage criteria.",),
    },
}  # fmt: skip
ECG_IMPRESSION: dict[str, tuple[str, ...]] = {
    "af": ("Atrial fibrillation.", "AFib."),
    "st_elevation": ("Acute {territory} ST elevation myocardial infarction.",),
    "q_waves": ("Old {territory} infarct.",),
    "lvh_voltage": ("Left ventricular hypertrophy.", "LVH."),
}
TERRITORY_LEADS = {
    "anterior": "V1-V4",
    "inferior": "II, III and aVF",
    "lateral": "I, aVL, V5 and V6",
}


def apply_errors(
    rng: np.random.Generator, strengths: dict[str, float], error_rate: float
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """What the reader 'saw': usually the evidence, sometimes one finding missed or invented."""
    seen = dict(strengths)
    errors: dict[str, list[str]] = {"missed": [], "invented": []}
    if rng.random() >= error_rate:
        return seen, errors
    present = [k for k, v in strengths.items() if v > 0]
    absent = [k for k, v in strengths.items() if v == 0]
    if present and (not absent or rng.random() < 0.5):
        missed = present[int(rng.integers(len(present)))]
        seen[missed] = 0.0
        errors["missed"].append(missed)
    elif absent:
        invented = absent[int(rng.integers(len(absent)))]
        seen[invented] = float(rng.uniform(0.3, 0.8))
        errors["invented"].append(invented)
    return seen, errors


def grade(rng: np.random.Generator, strength: float) -> str:
    """Reader's verdict on one finding: 'pos', 'hedged', 'neg' or 'omit' (not mentioned)."""
    reading = strength + float(rng.normal(0.0, 0.08))
    if reading >= 0.45:
        return "pos"
    if reading >= 0.15:
        return "hedged"
    return "neg" if rng.random() < 0.65 else "omit"


def _header(patient_line: str | None, title: str, indication: str) -> list[str]:
    lines = [title]
    if patient_line is not None:
        lines.append(patient_line)
    return [*lines, "", "INDICATION:", indication, ""]


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def radiology_report(
    rng: np.random.Generator,
    seen: dict[str, float],
    slots: dict[str, str],
    view: str,
    indication: str,
    patient_line: str | None,
    signer: str,
) -> str:
    """INDICATION / FINDINGS / IMPRESSION for a chest radiograph."""
    findings, impression = [], []
    for name, phrases in RADIOLOGY.items():
        verdict = grade(rng, seen[name])
        if verdict == "omit":
            continue
        findings.append(_sentence_case(pick(rng, phrases[verdict]).format(**slots)))
        if verdict == "pos":
            impression.append(_sentence_case(pick(rng, RADIOLOGY_IMPRESSION[name]).format(**slots)))
        elif verdict == "hedged":
            impression.append(_sentence_case(pick(rng, phrases["hedged"]).format(**slots)))
    if not findings:
        findings.append("Lungs are clear. Heart and mediastinum are unremarkable.")
    if not impression:
        impression.append(
            pick(
                rng, ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")
            )
        )
    title = f"CHEST RADIOGRAPH, {view} VIEW"
    body = ["FINDINGS:", " ".join(findings), "", "IMPRESSION:", *impression, ""]
    return "\n".join(
        [*_header(patient_line, title, indication), *body, f"Reported by: Dr. {signer}", ""]
    )


def ecg_report(
    rng: np.random.Generator,
    seen: dict[str, float],
    territory: str,
    rate_bpm: int,
    indication: str,
    patient_line: str | None,
    signer: str,
) -> str:
    """INDICATION / FINDINGS / IMPRESSION for a resting 12-lead ECG, with measured intervals."""
    sinus = (
        "Sinus tachycardia"
        if rate_bpm > 100
        else "Sinus bradycardia"
        if rate_bpm < 60
        else pick(rng, ("Normal sinus rhythm", "Sinus rhythm"))
    )
    slots = {
        "rate": str(rate_bpm),
        "sinus": sinus,
        "territory": territory,
        "leads": TERRITORY_LEADS[territory],
    }
    findings = [
        f"Ventricular rate {rate_bpm} bpm. QRS duration {int(rng.integers(84, 104))} ms. "
        f"QTc {int(rng.integers(400, 460))} ms."
    ]
    impression = []
    for name, phrases in ECG.items():
        verdict = grade(rng, seen[name])
        if name == "af" and verdict == "omit":
            verdict = "neg"  # a rhythm statement is always made
        if verdict == "omit":
            continue
        findings.append(pick(rng, phrases[verdict]).format(**slots))
        if verdict == "pos":
            impression.append(pick(rng, ECG_IMPRESSION[name]).format(**slots))
        elif verdict == "hedged":
            impression.append(pick(rng, phrases["hedged"]).format(**slots))
    impression = [_sentence_case(s) for s in impression]
    impression.insert(0, "Abnormal ECG." if impression else "Normal ECG.")
    body = ["FINDINGS:", " ".join(findings), "", "IMPRESSION:", *impression, ""]
    return "\n".join(
        [
            *_header(patient_line, "RESTING 12-LEAD ECG", indication),
            *body,
            f"Reported by: Dr. {signer}",
            "",
        ]
    )


def indication(rng: np.random.Generator, conditions: dict[str, int], exam: str) -> str:
    """Why the exam was ordered: often hints at the condition, sometimes generic."""
    hints = {
        "heart_failure": ("Shortness of breath.", "Dyspnea and leg swelling."),
        "pneumonia": ("Fever and cough.", "Rule out pneumonia."),
        "pleural_effusion": ("Decreased breath sounds at the base.",),
        "myocardial_infarction": ("Chest pain.", "Chest pain, rule out ACS."),
        "atrial_fibrillation": ("Palpitations.", "Irregular pulse."),
        "left_ventricular_hypertrophy": ("Hypertension follow-up.",),
    }
    generic = ("Pre-operative assessment.", "Follow-up.", "Routine examination.", "Weakness.")
    candidates = [h for name, hs in hints.items() if conditions[name] for h in hs]
    if exam == "radiology":
        candidates = [c for c in candidates if c not in ("Palpitations.", "Irregular pulse.")]
    if candidates and rng.random() < 0.6:
        return pick(rng, tuple(candidates))
    return pick(rng, generic)


def effusion_slots(strength: float, side: str) -> dict[str, str]:
    """Size words for an effusion of this strength ('small left', 'moderate bilateral', ...)."""
    size = "small" if strength < 0.5 else "moderate" if strength < 0.8 else "large"
    return {"size": size.capitalize(), "size_l": f"a {size}", "side": side}
