"""ECG readers on real data: PTB-XL (100 and 500 Hz), MIT-BIH 100, pydicom's 12-lead waveform.

Records written here with ``wfdb.wrsamp`` reuse a real PTB-XL signal, so rate, format, unit and
layout variations are checked against the same real ECG read directly. Records are chosen by
listing the folders; nothing depends on the content of one particular record.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file
from scipy.signal import resample_poly

from clinic.ingest.ecg import (
    RECORD_FLAGS_KEY,
    LeadMatch,
    canonical_lead,
    read_dicom_ecg,
    read_wfdb_ecg,
    standardise_ecg,
)
from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.types import STANDARD_LEADS, DecodedEcg

Signal = npt.NDArray[np.float64]
EDGE = 100  # samples at 500 Hz (0.2 s) left out where PTB-XL's 100 Hz files carry edge transients
UNIT_SCALE = {"mV": 1.0, "uV": 1000.0, "V": 0.001}


# --------------------------------------------------------------------------------------------
# helpers


def _ptbxl_pairs(shared_data: Path, count: int) -> list[tuple[Path, Path]]:
    """The first ``count`` ECGs present at both 100 Hz and 500 Hz, by listing the folders."""
    root = shared_data / "ptbxl"
    pairs = []
    for low in sorted((root / "records100").glob("*/*_lr.hea")):
        high = root / "records500" / low.parent.name / low.name.replace("_lr", "_hr")
        if high.is_file():
            pairs.append((low, high))
        if len(pairs) == count:
            break
    assert len(pairs) == count, "PTB-XL records are missing from the shared data"
    return pairs


@pytest.fixture(scope="module")
def real_500(shared_data: Path) -> tuple[Signal, list[str]]:
    """A real 12-lead PTB-XL ECG at 500 Hz in mV, (samples, leads), with its lead names."""
    _, high = _ptbxl_pairs(shared_data, 1)[0]
    record = wfdb.rdrecord(str(high.with_suffix("")))
    return np.asarray(record.p_signal, dtype=np.float64), [str(n) for n in record.sig_name]


def _write(
    folder: Path,
    signal_mv: Signal,
    names: Sequence[str],
    fs: float,
    *,
    fmt: str = "16",
    units: str = "mV",
    name: str = "rec",
    comments: list[str] | None = None,
) -> Path:
    """Write a WFDB record with wfdb.wrsamp and return its record path (no extension)."""
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * len(names),
        sig_name=list(names),
        p_signal=signal_mv * UNIT_SCALE[units],
        fmt=[fmt] * len(names),
        comments=comments,
        write_dir=str(folder),
    )
    return folder / name


def _corr(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _check_output(ecg: DecodedEcg, rate: int = 500, duration_s: float = 10.0) -> None:
    """The contract every decoded ECG meets."""
    assert ecg.signal.shape == (12, round(rate * duration_s))
    assert ecg.signal.dtype == np.float32
    assert np.isfinite(ecg.signal).all()
    assert ecg.lead_mask.shape == (12,) and ecg.lead_mask.dtype == np.bool_
    assert not ecg.signal[~ecg.lead_mask].any()
    assert ecg.sampling_rate == rate


def _refusal(reason: ReasonCode, call: object, *args: object) -> IngestError:
    assert callable(call)
    with pytest.raises(IngestError) as caught:
        call(*args)
    assert caught.value.reason is reason, caught.value
    return caught.value


# --------------------------------------------------------------------------------------------
# real records


def test_ptbxl_100hz_resampled_matches_500hz_record(shared_data: Path) -> None:
    for low, high in _ptbxl_pairs(shared_data, 3):
        from_100 = read_wfdb_ecg(low)
        from_500 = read_wfdb_ecg(high.with_suffix(""))
        for ecg in (from_100, from_500):
            _check_output(ecg)
            assert ecg.lead_mask.all()
            assert ecg.source_duration_s == pytest.approx(10.0)
            assert ecg.source_format == "wfdb"
            assert ecg.dropped_leads == []
        assert from_100.source_sampling_rate == 100.0
        for lead in range(12):
            a, b = from_100.signal[lead, EDGE:-EDGE], from_500.signal[lead, EDGE:-EDGE]
            assert _corr(a, b) > 0.9, (low.name, STANDARD_LEADS[lead])


def test_ptbxl_500hz_is_passed_through_in_canonical_order(shared_data: Path) -> None:
    _, high = _ptbxl_pairs(shared_data, 1)[0]
    record = wfdb.rdrecord(str(high.with_suffix("")))
    ecg = read_wfdb_ecg(high)
    order = [[canonical_lead(n) for n in record.sig_name].index(LeadMatch(lead, False))
             for lead in STANDARD_LEADS]  # fmt: skip
    np.testing.assert_allclose(ecg.signal, record.p_signal[:, order].T, atol=1e-6)


def test_ptbxl_einthoven_and_goldberger_hold(shared_data: Path) -> None:
    for low, high in _ptbxl_pairs(shared_data, 2):
        for path in (low, high):
            s = read_wfdb_ecg(path).signal.astype(np.float64)
            i, ii, iii, avr, avl, avf = s[:6]
            scale = np.abs(ii).max()
            assert np.abs(ii - (i + iii)).max() < 0.02 * scale
            assert np.abs(avr + avl + avf).max() < 0.03 * scale


def test_mitbih_two_lead_record_is_refused_naming_its_leads(shared_data: Path) -> None:
    error = _refusal(
        ReasonCode.ECG_MISSING_LEADS, read_wfdb_ecg, shared_data / "wfdb-samples" / "100.hea"
    )
    assert "2 leads (MLII, V5)" in error.message
    missing = error.message.split("missing:")[1]
    assert "II" in missing and "V1" in missing and "V5" not in missing


@pytest.fixture(scope="module")
def ecg_dicom() -> pydicom.Dataset:
    path = get_testdata_file("waveform_ecg.dcm")
    assert path is not None
    return pydicom.dcmread(path)


def test_dicom_waveform_decodes_to_canonical_leads_in_mv(ecg_dicom: pydicom.Dataset) -> None:
    ecg = read_dicom_ecg(ecg_dicom)
    _check_output(ecg)
    assert ecg.lead_mask.all()
    assert ecg.source_format == "dicom"
    assert ecg.source_duration_s == pytest.approx(10.0)  # the rhythm group, not the median beat
    assert [canonical_lead(name) for name in ecg.source_leads] == [
        LeadMatch(lead, False) for lead in STANDARD_LEADS
    ]
    peak = np.abs(ecg.signal).max(axis=1)
    assert (peak > 0.05).all() and (peak < 5.0).all()  # mV, not µV
    s = ecg.signal.astype(np.float64)
    assert np.abs(s[1] - (s[0] + s[2])).max() < 0.05 * np.abs(s[1]).max()
    assert ecg.identity.patient_id and ecg.identity.study_uid and ecg.identity.study_date
    assert ecg.identity.patient_sex in {"M", "F", "O"}
    assert ecg.identity.patient_age_years is not None and 0 < ecg.identity.patient_age_years < 120


def test_dicom_channel_sensitivity_and_units_are_applied(ecg_dicom: pydicom.Dataset) -> None:
    group = next(
        item
        for item in ecg_dicom.WaveformSequence
        if int(item.NumberOfWaveformSamples) / float(item.SamplingFrequency) >= 10
    )
    rate = round(float(group.SamplingFrequency))
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(-1, 12).astype(np.float64)
    channel = group.ChannelDefinitionSequence[0]
    assert channel.ChannelSensitivityUnitsSequence[0].CodeValue == "uV"
    expected_mv = raw[:, 0] * float(channel.ChannelSensitivity) / 1000.0
    ecg = read_dicom_ecg(ecg_dicom, target_rate=rate)  # source rate: no resampling
    np.testing.assert_allclose(ecg.signal[0], expected_mv[: rate * 10], atol=1e-5)


def test_dicom_group_choice_and_coded_leads(ecg_dicom: pydicom.Dataset) -> None:
    reference = read_dicom_ecg(ecg_dicom)
    ds = copy.deepcopy(ecg_dicom)
    ds.WaveformSequence = pydicom.Sequence(list(reversed(list(ds.WaveformSequence))))
    for item in ds.WaveformSequence:
        for channel in item.ChannelDefinitionSequence:
            code = channel.ChannelSourceSequence[0]
            number = code.CodeValue.rsplit("-", 1)[1]  # SCP-ECG and MDC share lead numbers
            code.CodeValue, code.CodingSchemeDesignator = f"2:{number}", "MDC"
            code.CodeMeaning = "unlabelled"
    ecg = read_dicom_ecg(ds)
    assert ecg.source_duration_s == pytest.approx(10.0)
    assert ecg.source_leads == list(STANDARD_LEADS)
    np.testing.assert_array_equal(ecg.signal, reference.signal)


def test_dicom_without_waveforms_is_refused(ecg_dicom: pydicom.Dataset) -> None:
    ds = copy.deepcopy(ecg_dicom)
    del ds.WaveformSequence
    _refusal(ReasonCode.ECG_WAVEFORM_MISSING, read_dicom_ecg, ds)


def test_dicom_channel_without_calibration_is_refused(ecg_dicom: pydicom.Dataset) -> None:
    ds = copy.deepcopy(ecg_dicom)
    for item in ds.WaveformSequence:
        del item.ChannelDefinitionSequence[3].ChannelSensitivity
    _refusal(ReasonCode.ECG_UNSUPPORTED_UNITS, read_dicom_ecg, ds)


# --------------------------------------------------------------------------------------------
# records written here from a real signal


@pytest.mark.parametrize("fs", [250, 1000])
@pytest.mark.parametrize("fmt", ["16", "212"])
def test_rates_and_formats_in_microvolts(
    tmp_path: Path, real_500: tuple[Signal, list[str]], fs: int, fmt: str
) -> None:
    signal, names = real_500
    source = resample_poly(signal, fs, 500, axis=0)
    ecg = read_wfdb_ecg(_write(tmp_path, source, names, fs, fmt=fmt, units="uV"))
    _check_output(ecg)
    assert ecg.lead_mask.all() and ecg.source_sampling_rate == fs
    reference = read_wfdb_ecg(_write(tmp_path, signal, names, 500, name="ref"))
    for lead in range(12):
        a, b = ecg.signal[lead, EDGE:-EDGE], reference.signal[lead, EDGE:-EDGE]
        assert _corr(a, b) > 0.97
        assert np.std(a) == pytest.approx(np.std(b), rel=0.05)  # µV became mV


def test_volts_and_header_path(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    record = _write(tmp_path, signal, names, 500, units="V")
    ecg = read_wfdb_ecg(record.with_name(record.name + ".hea"))
    assert np.abs(ecg.signal).max() == pytest.approx(np.abs(signal).max(), rel=0.01)


def test_unknown_units_are_refused(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    record = _write(tmp_path, signal, names, 500)
    header = record.with_name("rec.hea")
    header.write_text(header.read_text().replace("/mV", "/mmHg", 1))
    _refusal(ReasonCode.ECG_UNSUPPORTED_UNITS, read_wfdb_ecg, record)


def test_two_lead_record_is_refused(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, _ = real_500
    record = _write(tmp_path, signal[:, :2], ["I", "V2"], 500)
    error = _refusal(ReasonCode.ECG_MISSING_LEADS, read_wfdb_ecg, record)
    assert "2 leads (I, V2)" in error.message


def test_extra_leads_are_dropped(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    xyz = signal[:, :3] * 0.5
    record = _write(tmp_path, np.hstack([signal, xyz]), [*names, "vx", "vy", "vz"], 500)
    ecg = read_wfdb_ecg(record)
    assert ecg.dropped_leads == ["vx", "vy", "vz"]
    assert len(ecg.source_leads) == 15
    reference = read_wfdb_ecg(_write(tmp_path, signal, names, 500, name="ref"))
    np.testing.assert_allclose(ecg.signal, reference.signal, atol=2e-3)


def test_shuffled_lowercase_and_cabrera_leads(
    tmp_path: Path, real_500: tuple[Signal, list[str]]
) -> None:
    signal, names = real_500
    reference = read_wfdb_ecg(_write(tmp_path, signal, names, 500, name="ref"))
    order = np.random.default_rng(7).permutation(12)
    shuffled = [names[k].lower() for k in order]
    ecg = read_wfdb_ecg(_write(tmp_path, signal[:, order], shuffled, 500, name="shuf"))
    np.testing.assert_allclose(ecg.signal, reference.signal, atol=2e-3)
    avr = [canonical_lead(n) for n in names].index(LeadMatch("aVR", False))
    cabrera = signal.copy()
    cabrera[:, avr] *= -1
    labels = [*names[:avr], "-aVR", *names[avr + 1 :]]
    ecg = read_wfdb_ecg(_write(tmp_path, cabrera, labels, 500, name="cab"))
    np.testing.assert_allclose(ecg.signal, reference.signal, atol=2e-3)


def test_missing_samples(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    gappy = signal.copy()
    gappy[1000:1010, 2] = np.nan  # a few samples of lead III
    gappy[:4000, 7] = np.nan  # most of V2
    ecg = read_wfdb_ecg(_write(tmp_path, gappy, names, 500))
    _check_output(ecg)
    assert ecg.quality_flags["III"] == ["nan"] and ecg.lead_mask[2]
    assert ecg.quality_flags["V2"] == ["nan"] and not ecg.lead_mask[7]
    assert not ecg.signal[7].any()
    assert sum(ecg.lead_mask) == 11


def test_flat_lead_is_masked(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    flat = signal.copy()
    flat[:, 4] = 0.3 + 0.001 * np.random.default_rng(1).standard_normal(len(flat))
    ecg = read_wfdb_ecg(_write(tmp_path, flat, names, 500))
    _check_output(ecg)
    assert ecg.quality_flags["aVL"] == ["flat"] and not ecg.lead_mask[4]
    assert sum(ecg.lead_mask) == 11


def test_clipped_lead_is_flagged(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    clipped = signal.copy()
    lead = clipped[:, 1]
    clipped[:, 1] = np.clip(lead, None, np.percentile(lead, 85))  # saturated top 15%
    ecg = read_wfdb_ecg(_write(tmp_path, clipped, names, 500))
    assert ecg.quality_flags["II"] == ["clipped"] and ecg.lead_mask[1]
    assert all(not flags for lead, flags in ecg.quality_flags.items() if lead != "II")


def test_all_leads_unusable_is_refused(real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    _refusal(
        ReasonCode.ECG_NO_USABLE_SIGNAL,
        lambda: standardise_ecg(
            np.zeros_like(signal), names, ["mV"] * 12, 500.0, source_format="wfdb"
        ),
    )


def test_short_and_long_records(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    _refusal(ReasonCode.ECG_TOO_SHORT, read_wfdb_ecg, _write(tmp_path, signal[:1500], names, 500))
    short = read_wfdb_ecg(_write(tmp_path, signal[:3500], names, 500, name="s7"))
    _check_output(short)
    assert short.quality_flags[RECORD_FLAGS_KEY] == ["padded"]
    assert short.source_duration_s == pytest.approx(7.0)
    assert not short.signal[:, 3500:].any() and short.signal[:, :3500].any()
    long = np.vstack([signal, signal[::-1], signal])  # 30 s
    ecg = read_wfdb_ecg(_write(tmp_path, long, names, 500, name="l30"))
    reference = read_wfdb_ecg(_write(tmp_path, signal, names, 500, name="ref"))
    assert ecg.source_duration_s == pytest.approx(30.0)
    assert RECORD_FLAGS_KEY not in ecg.quality_flags
    np.testing.assert_allclose(ecg.signal, reference.signal, atol=2e-3)  # the first 10 s


def test_identity_from_header_comments(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    record = _write(tmp_path, signal, names, 500, comments=["age: 62", "sex: female"])
    identity = read_wfdb_ecg(record).identity
    assert identity.patient_age_years == 62.0 and identity.patient_sex == "F"
    assert identity.patient_id is None


def test_anti_aliasing(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    """A 400 Hz tone at 1000 Hz would fold to 100 Hz at 500 Hz unless low-passed first."""
    signal, names = real_500
    clean = resample_poly(signal, 2, 1, axis=0)
    t = np.arange(len(clean)) / 1000.0
    tone = 0.5 * np.sin(2 * np.pi * 400.0 * t)[:, None]
    with_tone = read_wfdb_ecg(_write(tmp_path, clean + tone, names, 1000, name="tone"))
    without = read_wfdb_ecg(_write(tmp_path, clean, names, 1000, name="clean"))
    residue = (with_tone.signal - without.signal).astype(np.float64)[:, EDGE:-EDGE]
    spectrum = np.abs(np.fft.rfft(residue, axis=1)) / residue.shape[1]
    freqs = np.fft.rfftfreq(residue.shape[1], d=1 / 500)
    alias = spectrum[:, np.argmin(np.abs(freqs - 100.0))]
    assert alias.max() < 0.005 * 0.25  # tone amplitude 0.5 mV shows as 0.25; < -46 dB
    naive = (clean + tone)[::2] - clean[::2]  # decimation without a filter does alias
    naive_spectrum = np.abs(np.fft.rfft(naive[:5000, 0])) / 5000
    assert naive_spectrum[np.argmin(np.abs(np.fft.rfftfreq(5000, 1 / 500) - 100))] > 0.2


# --------------------------------------------------------------------------------------------
# broken records


@pytest.mark.parametrize("change", ["header_longer", "header_shorter", "data_truncated"])
def test_length_mismatch_is_refused(
    tmp_path: Path, real_500: tuple[Signal, list[str]], change: str
) -> None:
    signal, names = real_500
    record = _write(tmp_path, signal, names, 500, fmt="212")
    header, data = tmp_path / "rec.hea", tmp_path / "rec.dat"
    first, rest = header.read_text().split("\n", 1)
    n = int(first.split()[3])
    if change == "data_truncated":
        data.write_bytes(data.read_bytes()[:-300])
    else:
        declared = n + 5 if change == "header_longer" else n - 5
        header.write_text(re.sub(rf" {n}$", f" {declared}", first) + "\n" + rest)
    _refusal(ReasonCode.ECG_LENGTH_MISMATCH, read_wfdb_ecg, record)


def test_missing_data_file_is_refused(tmp_path: Path, real_500: tuple[Signal, list[str]]) -> None:
    signal, names = real_500
    record = _write(tmp_path, signal, names, 500)
    (tmp_path / "rec.dat").unlink()
    _refusal(ReasonCode.ECG_DATA_MISSING, read_wfdb_ecg, record)


@pytest.mark.parametrize(
    "text",
    [
        b"this is not a WFDB header\n",
        b"",
        b"\x00\xff\xfe\x01binary junk",
        b"rec 12 500 5000\n",  # signal lines missing
        b"rec 1 500 5000\nrec.dat 16 200 16 0 0 0 0 I\nrec.dat 16 200 16 0 0 0 0 II\n",
    ],
)
def test_garbage_header_is_refused(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "rec.hea").write_bytes(text)
    (tmp_path / "rec.dat").write_bytes(bytes(1000))
    _refusal(ReasonCode.ECG_HEADER_INVALID, read_wfdb_ecg, tmp_path / "rec.hea")


# --------------------------------------------------------------------------------------------
# lead names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("I", LeadMatch("I", False)),
        ("lead i", LeadMatch("I", False)),
        ("Lead I (Einthoven)", LeadMatch("I", False)),
        ("DII", LeadMatch("II", False)),
        ("AVR", LeadMatch("aVR", False)),
        ("-aVR", LeadMatch("aVR", True)),
        ("MDC_ECG_LEAD_aVRneg", LeadMatch("aVR", True)),
        ("v1", LeadMatch("V1", False)),
        ("C6", LeadMatch("V6", False)),
        ("MLII", None),
        ("V4R", None),
        ("vx", None),
    ],
)
def test_canonical_lead(name: str, expected: LeadMatch | None) -> None:
    assert canonical_lead(name) == expected


def test_format16_fast_path_equals_wfdb_on_real_records(shared_data: Path) -> None:
    from clinic.ingest import ecg as ecg_module

    headers = sorted((shared_data / "ptbxl" / "records500").rglob("*.hea"))[:3]
    headers += sorted((shared_data / "ptbxl" / "records100").rglob("*.hea"))[:2]
    for header_path in headers:
        record_name = header_path.with_suffix("")
        header = wfdb.rdheader(str(record_name))
        data_file = ecg_module._format16_layout(header)
        assert data_file is not None
        fast = ecg_module._read_format16_signals(
            header, header_path.parent, data_file, header.sig_len
        )
        slow = wfdb.rdrecord(str(record_name), physical=True, return_res=64).p_signal
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


HEADER_FIELDS = (
    "n_sig", "fs", "sig_len", "file_name", "fmt", "adc_gain", "baseline", "units", "adc_res",
    "adc_zero", "sig_name", "samps_per_frame", "skew", "byte_offset", "comments",
)  # fmt: skip


def test_simple_header_parser_equals_wfdb_on_every_ptbxl_header(shared_data: Path) -> None:
    from clinic.ingest.ecg import parse_simple_header

    headers = sorted((shared_data / "ptbxl").rglob("*.hea"))
    assert headers
    for header_path in headers:
        fast = parse_simple_header(header_path.read_text())
        assert fast is not None, header_path.name
        reference = wfdb.rdheader(str(header_path.with_suffix("")))
        for field in HEADER_FIELDS:
            assert getattr(fast, field) == getattr(reference, field), (header_path.name, field)


def test_simple_header_parser_leaves_unusual_headers_to_wfdb(shared_data: Path) -> None:
    from clinic.ingest.ecg import parse_simple_header

    mitbih = (shared_data / "wfdb-samples" / "100.hea").read_text()  # gains without units
    assert parse_simple_header(mitbih) is None
    assert parse_simple_header("rec/2 12 500 5000\n") is None  # multi-segment
    assert parse_simple_header("") is None
