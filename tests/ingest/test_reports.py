"""Free-text reports: decoding, section splitting and identifier scrubbing, on real reports."""

from __future__ import annotations

import codecs
import random
import zlib
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.reports import (
    BODY_SECTION,
    DecodedReport,
    decode_text,
    read_report,
    scrub_identifiers,
    split_sections,
)

GERMAN_LETTERS = frozenset("äöüßÄÖÜ")


@pytest.fixture(scope="module")
def iu_reports(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "iu-reports" / "indiana_reports.csv", dtype=str)


@pytest.fixture(scope="module")
def ptbxl_reports(shared_data: Path) -> list[str]:
    frame = pd.read_csv(shared_data / "ptbxl" / "ptbxl_database.csv", usecols=["report"])
    reports = [text for text in frame["report"].dropna() if text.strip()]
    assert reports
    return reports


def _iu_sections(row: Mapping[Hashable, Any]) -> dict[str, str]:
    """The sections a real IU row provides (CSV columns with text)."""
    sections = {}
    for name in ("indication", "comparison", "findings", "impression"):
        value = row[name]
        if isinstance(value, str) and value.strip():
            sections[name] = value.strip()
    return sections


def _iu_text(sections: dict[str, str]) -> str:
    return "\n".join(f"{name.upper()}: {text}" for name, text in sections.items())


# -- sections on real reports -----------------------------------------------------------------


def test_every_iu_report_round_trips_through_split_sections(iu_reports: pd.DataFrame) -> None:
    checked = 0
    for row in iu_reports.to_dict("records"):
        expected = _iu_sections(row)
        if not expected:
            continue
        assert split_sections(_iu_text(expected)) == expected
        checked += 1
    assert checked > 0.9 * len(iu_reports)


def test_every_iu_report_reads(iu_reports: pd.DataFrame) -> None:
    for row in iu_reports.to_dict("records"):
        expected = _iu_sections(row)
        if not expected:
            continue
        data = _iu_text(expected).replace("\n", "\r\n").encode("utf-8")
        report = read_report(data)
        assert report.encoding == "utf-8"
        assert set(report.sections) <= set(expected)
        if report.scrubbed_count == 0:
            assert report.sections == expected
        if "findings" in expected:
            assert "findings" in report.sections
        if "impression" in expected:
            assert "impression" in report.sections


def test_ptbxl_reports_decode_and_keep_their_text(ptbxl_reports: list[str]) -> None:
    for text in ptbxl_reports:
        report = read_report(text.encode("utf-8"))
        assert report.scrubbed_count == 0
        assert report.text == text.strip()
        assert report.sections == {BODY_SECTION: text.strip()}  # ECG statements: no headers


def test_a_latin1_german_report_decodes_to_the_same_text(ptbxl_reports: list[str]) -> None:
    german = [
        text
        for text in ptbxl_reports
        if GERMAN_LETTERS & set(text) and all(ord(ch) < 256 for ch in text)
    ]
    if not german:
        pytest.skip("no PTB-XL report with umlauts in this data subset")
    for text in german:
        decoded, encoding = decode_text(text.encode("latin-1"))
        assert decoded == text
        assert encoding in {"cp1252", "iso8859-1", "iso8859-15"}


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp1252"]
)
def test_real_reports_in_common_encodings(ptbxl_reports: list[str], encoding: str) -> None:
    for text in ptbxl_reports:
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            continue
        assert decode_text(data)[0] == text


# -- decoding ---------------------------------------------------------------------------------

SAMPLE = "Befund: Herz normal groß, keine Stauung.\nBeurteilung: unauffällig – „kein Erguss“."


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (SAMPLE.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + SAMPLE.encode("utf-8"), "utf-8"),
        (SAMPLE.encode("utf-16"), "utf-16-le"),
        (codecs.BOM_UTF16_BE + SAMPLE.encode("utf-16-be"), "utf-16-be"),
        (SAMPLE.encode("utf-16-le"), "utf-16-le"),  # no BOM
        (SAMPLE.encode("utf-32"), "utf-32-le"),
        (SAMPLE.encode("cp1252"), "cp1252"),
    ],
)
def test_decode_text(data: bytes, encoding: str) -> None:
    assert decode_text(data) == (SAMPLE, encoding)


def test_cyrillic_code_page_is_not_forced_into_cp1252() -> None:
    text = "Синусовый ритм. Нормальная ЭКГ. Гипертрофия левого желудочка."
    assert decode_text(text.encode("cp1251")) == (text, "cp1251")


def _random_bytes(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(size))


@pytest.mark.parametrize(
    "data",
    [
        _random_bytes(1, 16),
        _random_bytes(2, 300),
        _random_bytes(3, 5000),
        bytes(range(256)) * 4,
        zlib.compress(SAMPLE.encode() * 50),
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"%PDF-1.4\n" + zlib.compress(bytes(range(256)) * 8),
        b"\x00" * 64,
        b"text\x01\x02\x03\x04\x05\x06 with controls",
    ],
)
def test_binary_is_undecodable(data: bytes) -> None:
    with pytest.raises(IngestError) as caught:
        read_report(data)
    assert caught.value.reason is ReasonCode.REPORT_UNDECODABLE


@pytest.mark.parametrize("data", [b"", b"   \n\t  \r\n", " \n".encode("utf-16"), b"\xef\xbb\xbf"])
def test_empty_report(data: bytes) -> None:
    with pytest.raises(IngestError) as caught:
        read_report(data)
    assert caught.value.reason is ReasonCode.REPORT_EMPTY


def test_trailing_nul_padding_is_tolerated() -> None:
    assert decode_text(b"FINDINGS: clear lungs." + b"\x00" * 20) == (
        "FINDINGS: clear lungs.",
        "utf-8",
    )


# -- sections ---------------------------------------------------------------------------------


def test_headerless_text_goes_to_body() -> None:
    assert split_sections("  sinus rhythm, normal ECG  ") == {
        BODY_SECTION: "sinus rhythm, normal ECG"
    }
    assert split_sections("") == {}


def test_header_variants() -> None:
    text = (
        "Chest radiograph, two views\n"
        "Clinical history\ncough and fever\n\n"
        "Comparison: none\n"
        "technique - PA and lateral\n"
        "FINDINGS\nclear lungs\nno effusion\n"
        "Conclusion: normal"
    )
    assert split_sections(text) == {
        BODY_SECTION: "Chest radiograph, two views",
        "indication": "cough and fever",
        "comparison": "none",
        "technique": "PA and lateral",
        "findings": "clear lungs\nno effusion",
        "impression": "normal",
    }


def test_german_headers() -> None:
    text = "Fragestellung: Pneumonie?\nBefund: Herz normal groß.\nBeurteilung: unauffällig"
    assert split_sections(text) == {
        "indication": "Pneumonie?",
        "findings": "Herz normal groß.",
        "impression": "unauffällig",
    }


def test_flattened_reports_split_only_on_capitalised_headers() -> None:
    text = "INDICATION: cough. FINDINGS: no change since the prior. History: smoker. IMPRESSION: ok"
    assert split_sections(text) == {
        "indication": "cough.",
        "findings": "no change since the prior. History: smoker.",
        "impression": "ok",
    }


def test_repeated_and_empty_sections() -> None:
    text = "FINDINGS: heart normal.\nIMPRESSION:\nFINDINGS: lungs clear."
    assert split_sections(text) == {"findings": "heart normal.\nlungs clear."}


def test_words_that_are_headers_elsewhere_do_not_split_prose() -> None:
    text = "Findings consistent with prior history of pneumonia.\nSummary of views is below."
    assert split_sections(text) == {BODY_SECTION: text}


# -- scrubbing --------------------------------------------------------------------------------


def test_known_identifiers_are_scrubbed_case_insensitively_and_word_bounded() -> None:
    text = "Ann Smith (MRN 00123) seen. ann  smith's annual review; ACC-77 pending. Smithfield."
    scrubbed, count = scrub_identifiers(text, ["Ann Smith", "acc-77", "Smith", "", "x"])
    assert scrubbed == "[NAME] (MRN [ID]) seen. [NAME]'s annual review; [ID] pending. Smithfield."
    assert count == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MRN: 1234567 on file", "MRN: [ID] on file"),
        ("Accession no. A12345", "Accession no. [ID]"),
        ("call (555) 123-4567 today", "call [PHONE] today"),
        ("Tel. +49 511 532-0", "Tel. [PHONE]"),
        ("Tel. 0511 532 0", "Tel. [PHONE]"),
        ("mail j.doe@example.org now", "mail [EMAIL] now"),
        ("seen 12/03/2021 and 2021-03-12", "seen [DATE] and [DATE]"),
        ("am 12.03.2021 sowie 12. März 2021", "am [DATE] sowie [DATE]"),
        ("on March 12, 2021.", "on [DATE]."),
        ("Discussed with Dr. Smith at noon", "Discussed with Dr. [NAME] at noon"),
        ("Dr. med. Müller", "Dr. med. [NAME]"),
        ("by Dr John Smith.", "by Dr [NAME]."),
    ],
)
def test_identifier_patterns(text: str, expected: str) -> None:
    scrubbed, count = scrub_identifiers(text)
    assert scrubbed == expected
    assert count == expected.count("[")


@pytest.mark.parametrize(
    "text",
    [
        "BP 120/80 mmHg, HR 72/min, QRS 100 ms, PR 160 ms.",
        "ST elevation V1-V3, T10-T12 compression, lesion 3-4-10 cm, 1.5 x 2.3 cm.",
        "values 120 130 140 150 mmHg; dose 2.5 mg; Sokolow 2,6; 1234.5678",
        "Dr. XXXX was called; XXXX-year-old female.",
        "MR grade 2, PID history, ID consult.",
    ],
)
def test_ordinary_medical_text_is_left_alone(text: str) -> None:
    assert scrub_identifiers(text) == (text, 0)


def test_read_report_scrubs_before_splitting() -> None:
    data = (
        "INDICATION: Jane Roe, MRN 889911, chest pain.\r\n"
        "FINDINGS: Normal heart. Discussed with Dr. Smith on 03/04/2020.\r\n"
        "IMPRESSION: Normal."
    ).encode("cp1252")
    report = read_report(data, known_identifiers=["Jane Roe"])
    assert isinstance(report, DecodedReport)
    assert report.scrubbed_count == 4
    for secret in ("Jane", "889911", "Smith", "2020"):
        assert secret not in report.text
        assert all(secret not in section for section in report.sections.values())
    assert report.sections["impression"] == "Normal."
    assert "\r" not in report.text


def test_refusals_do_not_quote_content() -> None:
    with pytest.raises(IngestError) as caught:
        read_report(b"Jane Roe\x00\x01\x02" * 10)
    assert "Jane" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient: Liam Larsen  MRN: MRN1128575", "Patient: [NAME]  MRN: [ID]"),
        ("Name: DOE^JANE\nFINDINGS: ok", "Name: [NAME]\nFINDINGS: ok"),
        ("Patientin: Müller, Anna\nBefund", "Patientin: [NAME]\nBefund"),
        ("Patient: 65-year-old male", "Patient: 65-year-old male"),
    ],
)
def test_labelled_name_fields_are_scrubbed(text: str, expected: str) -> None:
    assert scrub_identifiers(text)[0] == expected
