"""Radiograph decoding on real DICOM, PNG and JPEG files, and on real files broken on purpose.

Compressed files are checked against the uncompressed originals pydicom ships with them, per
decoding plugin, so a test passing proves the plugin decoders really work.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.processing import apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1

import clinic.ingest.xray as xray
from clinic.ingest.dicom_io import load_dicom
from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.xray import decode_dicom_xray, parse_age_years, read_raster_xray

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def sample_file(name: str) -> Path:
    """A real file from pydicom's (or pydicom-data's) test corpus; skip when not installed."""
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(str(found))


def load(name: str) -> Dataset:
    return load_dicom(sample_file(name))


def as_cr(ds: Dataset) -> Dataset:
    """Relabel a real grayscale object as a computed radiograph (pixels untouched)."""
    ds.Modality = "CR"
    ds.SOPClassUID = CR_STORAGE
    return ds


def refusal(ds: Dataset, **kwargs: Any) -> ReasonCode:
    with pytest.raises(IngestError) as caught:
        decode_dicom_xray(ds, **kwargs)
    return caught.value.reason


def synthetic_cr(values: npt.NDArray[Any], *, bits_stored: int, **attributes: Any) -> Dataset:
    """A native CR data set around ``values`` (2-D), for numeric checks of the rendering."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "CR"
    ds.SOPClassUID = CR_STORAGE
    photometric = attributes.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.set_pixel_data(values, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def hannover_pngs(shared_data: Path, count: int) -> list[Path]:
    return sorted((shared_data / "hannover-cxr" / "png").glob("*.png"))[:count]


# --------------------------------------------------------------------------------------------
# real chest CR (pydicom-data RG1: MONOCHROME1, 15-bit, window in the header)
# --------------------------------------------------------------------------------------------


def test_real_chest_cr_is_windowed_and_inverted() -> None:
    ds = load("RG1_UNCR.dcm")
    decoded = decode_dicom_xray(ds)
    raw = pixel_array(ds).astype(np.float64)
    assert decoded.window == (15000.0, 30000.0)
    # PS3.3 C.11.2.1.2.1 linear window, then MONOCHROME1 inversion
    center, width = 15000.0 - 0.5, 30000.0 - 1.0
    expected = 1.0 - np.clip((raw - center) / width + 0.5, 0.0, 1.0)
    assert decoded.pixels.dtype == np.float32
    assert decoded.pixels.shape == (1955, 1841)
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.source_format == "dicom"
    assert decoded.identity.patient_id == "9RG1"
    assert decoded.identity.study_date == "20040826"
    assert decoded.identity.patient_sex == "F"
    attributes = decoded.attributes
    assert attributes["Modality"] == "CR"
    assert attributes["ViewPosition"] == "PA"
    assert attributes["PhotometricInterpretation"] == "MONOCHROME1"
    assert attributes["BitsStored"] == 15
    assert attributes["BodyPartExamined"] == "CHEST"
    assert attributes["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert isinstance(attributes["PixelSpacing"], list)
    assert all(isinstance(v, float) for v in attributes["PixelSpacing"])
    json.dumps(attributes)
    assert "PatientID" not in attributes and "PatientName" not in attributes


def test_real_chest_cr_jpeg2000_lossless_equals_uncompressed() -> None:
    compressed = decode_dicom_xray(load("RG1_J2KR.dcm"))
    reference = decode_dicom_xray(load("RG1_UNCR.dcm"))
    assert np.array_equal(compressed.pixels, reference.pixels)
    assert compressed.raw_sha256 == reference.raw_sha256  # content key ignores the encoding
    assert compressed.attributes["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.90"


# --------------------------------------------------------------------------------------------
# each decoder plugin against the uncompressed original
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compressed", "reference", "plugin"),
    [
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm", "pylibjpeg"),  # pylibjpeg-openjpeg
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm", "pillow"),  # Pillow's OpenJPEG
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", "pylibjpeg"),
        ("MR_small_RLE.dcm", "MR_small.dcm", "pylibjpeg"),  # pylibjpeg-rle
        ("MR_small_RLE.dcm", "MR_small.dcm", "pydicom"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "pyjpegls"),  # CharLS
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "gdcm"),
    ],
)
def test_plugin_decodes_like_the_uncompressed_file(
    compressed: str, reference: str, plugin: str
) -> None:
    decoded = pixel_array(load(compressed), decoding_plugin=plugin)
    assert np.array_equal(decoded, pixel_array(load(reference)))


@pytest.mark.parametrize(
    "compressed",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
)
def test_compressed_radiograph_decodes_like_uncompressed(compressed: str) -> None:
    decoded = decode_dicom_xray(as_cr(load(compressed)))
    reference = decode_dicom_xray(as_cr(load("MR_small.dcm")))
    assert np.array_equal(decoded.pixels, reference.pixels)
    assert decoded.raw_sha256 == reference.raw_sha256


def test_jpeg_lossless_decodes_like_uncompressed(tmp_path: Path) -> None:
    """JPEG Lossless SV1, written by GDCM from the real MR_small, read back through pydicom."""
    gdcm = pytest.importorskip("gdcm")
    target = tmp_path / "lossless.dcm"
    reader = gdcm.ImageReader()
    reader.SetFileName(str(sample_file("MR_small.dcm")))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    ds = as_cr(load_dicom(target))
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    decoded = decode_dicom_xray(ds)
    reference = decode_dicom_xray(as_cr(load("MR_small.dcm")))
    assert np.array_equal(decoded.pixels, reference.pixels)


def test_real_jpeg_lossless_8bit_file_decodes() -> None:
    decoded = decode_dicom_xray(as_cr(load("JPGLosslessP14SV1_1s_1f_8b.dcm")))
    assert decoded.pixels.shape == (768, 1024)
    assert 0.0 <= float(decoded.pixels.min()) < float(decoded.pixels.max()) <= 1.0


def _baseline_jpeg_cr(jpeg: bytes, shape: tuple[int, int]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Modality = "CR"
    ds.SOPClassUID = CR_STORAGE
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([jpeg])
    return ds


def test_jpeg_baseline_radiograph_decodes_like_pillow(shared_data: Path) -> None:
    """A real Hannover chest film stored as JPEG Baseline in a CR object."""
    with Image.open(hannover_pngs(shared_data, 1)[0]) as image:
        buffer = io.BytesIO()
        image.convert("L").save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    with Image.open(io.BytesIO(jpeg)) as image:
        expected = np.asarray(image, dtype=np.uint8)
    ds = _baseline_jpeg_cr(jpeg, expected.shape)
    for plugin in ("pillow", "gdcm"):
        assert np.array_equal(pixel_array(ds, decoding_plugin=plugin), expected)
    decoded = decode_dicom_xray(ds)
    low, high = float(expected.min()), float(expected.max())
    np.testing.assert_allclose(decoded.pixels, (expected - low) / (high - low), atol=1e-6)


def test_plugins_installed_and_gpl_libjpeg_absent() -> None:
    for module in ("openjpeg", "rle", "jpeg_ls", "gdcm", "PIL"):
        assert importlib.util.find_spec(module) is not None, module
    assert importlib.util.find_spec("libjpeg") is None  # pylibjpeg-libjpeg is GPL-3.0


# --------------------------------------------------------------------------------------------
# rendering, checked numerically
# --------------------------------------------------------------------------------------------


def test_monochrome1_full_range_is_inverted() -> None:
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    ds = synthetic_cr(values, bits_stored=12, PhotometricInterpretation="MONOCHROME1")
    decoded = decode_dicom_xray(ds)
    assert decoded.window is None
    assert decoded.pixels[0, 0] == 1.0  # darkest stored value shows white in MONOCHROME1
    assert decoded.pixels[-1, -1] == 0.0
    np.testing.assert_allclose(decoded.pixels, 1.0 - values / 4095.0, atol=1e-6)


def test_first_window_is_applied() -> None:
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    ds = synthetic_cr(values, bits_stored=12, WindowCenter=[1024, 3000], WindowWidth=[512, 100])
    decoded = decode_dicom_xray(ds)
    assert decoded.window == (1024.0, 512.0)
    x = values.astype(np.float64)
    expected = np.clip((x - 1023.5) / 511.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.pixels[values <= 767].max() == 0.0
    assert decoded.pixels[values > 1279].min() == 1.0


def test_sixteen_bit_values_with_rescale_and_window() -> None:
    values = (np.arange(128 * 128, dtype=np.uint32) * 4).astype(np.uint16).reshape(128, 128)
    ds = synthetic_cr(
        values,
        bits_stored=16,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=40000,
        WindowWidth=60001,
    )
    decoded = decode_dicom_xray(ds)
    rescaled = values.astype(np.float64) * 2 - 1000
    expected = np.clip((rescaled - 39999.5) / 60000.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.attributes["RescaleSlope"] == 2.0
    assert decoded.attributes["RescaleIntercept"] == -1000.0


def test_signed_values_with_rescale_use_full_range() -> None:
    values = np.linspace(-2000, 3000, 64 * 64).astype(np.int16).reshape(64, 64)
    ds = synthetic_cr(values, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024)
    decoded = decode_dicom_xray(ds)
    x = values.astype(np.float64)
    np.testing.assert_allclose(decoded.pixels, (x - x.min()) / (x.max() - x.min()), atol=1e-6)


def test_voi_lut_sequence_is_applied() -> None:
    ds = as_cr(load("vlut_04.dcm"))
    decoded = decode_dicom_xray(ds)
    raw = pixel_array(ds)
    out = apply_voi(raw, ds).astype(np.float64)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (out - lut.min()) / (lut.max() - lut.min())
    assert decoded.window is None
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert float(decoded.pixels.min()) < float(decoded.pixels.max())


def test_invalid_window_falls_back_to_full_range() -> None:
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    ds = synthetic_cr(values, bits_stored=12, WindowCenter=100, WindowWidth=0)
    decoded = decode_dicom_xray(ds)
    assert decoded.window is None
    np.testing.assert_allclose(decoded.pixels, values / 4095.0, atol=1e-6)


def test_identity_and_age() -> None:
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    ds = synthetic_cr(
        values,
        bits_stored=12,
        PatientID="ID-123",
        StudyInstanceUID="1.2.3.4",
        StudyDate="20200131",
        PatientSex="m",
        PatientAge="065Y",
        PixelSpacing=[0.139, 0.139],
    )
    decoded = decode_dicom_xray(ds)
    assert decoded.identity.patient_id == "ID-123"
    assert decoded.identity.study_uid == "1.2.3.4"
    assert decoded.identity.study_date == "20200131"
    assert decoded.identity.patient_sex == "M"
    assert decoded.identity.patient_age_years == 65.0
    assert decoded.attributes["PixelSpacing"] == [0.139, 0.139]


@pytest.mark.parametrize(
    ("text", "years"),
    [("065Y", 65.0), ("006M", 0.5), ("026W", 26 * 7 / 365.25), ("030D", 30 / 365.25)],
)
def test_age_strings(text: str, years: float) -> None:
    age = parse_age_years(text)
    assert age is not None and math.isclose(age, years)


@pytest.mark.parametrize("text", ["", None, "65", "Y065", "abcY"])
def test_bad_age_strings(text: str | None) -> None:
    assert parse_age_years(text) is None


# --------------------------------------------------------------------------------------------
# refusals before decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["waveform_ecg.dcm", "test-SR.dcm", "rtdose_1frame.dcm"])
def test_non_image_objects(name: str) -> None:
    assert refusal(load(name)) is ReasonCode.DICOM_NOT_IMAGE


def test_segmentation_is_not_an_image() -> None:
    assert refusal(load("liver_1frame.dcm")) is ReasonCode.DICOM_NOT_IMAGE


def test_encapsulated_pdf_and_presentation_state_are_not_images() -> None:
    for sop_class, modality in (
        ("1.2.840.10008.5.1.4.1.1.104.1", "DOC"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "OT"),
    ):
        ds = load("MR_small.dcm")
        ds.SOPClassUID = sop_class
        ds.Modality = modality
        assert refusal(ds) is ReasonCode.DICOM_NOT_IMAGE


def test_no_pixel_data() -> None:
    ds = as_cr(load("MR_small.dcm"))
    del ds.PixelData
    assert refusal(ds) is ReasonCode.DICOM_NO_PIXEL_DATA


def test_multiframe() -> None:
    assert refusal(load("emri_small.dcm")) is ReasonCode.DICOM_MULTIFRAME
    ds = as_cr(load("MR_small.dcm"))
    ds.NumberOfFrames = 2
    assert refusal(ds) is ReasonCode.DICOM_MULTIFRAME


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "US1_UNCR.dcm"])
def test_unsupported_modalities(name: str) -> None:
    assert refusal(load(name)) is ReasonCode.DICOM_UNSUPPORTED_MODALITY


def test_other_modality_only_with_radiograph_evidence() -> None:
    ds = load("MR_small.dcm")
    ds.Modality = "OT"
    ds.SOPClassUID = SECONDARY_CAPTURE
    assert refusal(ds) is ReasonCode.DICOM_UNSUPPORTED_MODALITY
    ds.ConversionType = "DF"  # digitised film ...
    assert refusal(ds) is ReasonCode.DICOM_UNSUPPORTED_MODALITY
    ds.BodyPartExamined = "CHEST"  # ... of a chest
    assert decode_dicom_xray(ds).pixels.shape == (64, 64)
    ds = load("MR_small.dcm")
    ds.Modality = ""
    ds.SOPClassUID = CR_STORAGE  # the SOP class says radiograph
    assert decode_dicom_xray(ds).pixels.shape == (64, 64)


def test_absurd_dimensions() -> None:
    ds = as_cr(load("MR_small.dcm"))
    assert refusal(ds, max_pixels=1000) is ReasonCode.DICOM_DIMENSIONS_ABSURD
    ds.Rows = 0
    assert refusal(ds) is ReasonCode.DICOM_DIMENSIONS_ABSURD
    ds.Rows = 60000
    ds.Columns = 60000
    assert refusal(ds) is ReasonCode.DICOM_DIMENSIONS_ABSURD


def test_pixel_size_mismatch() -> None:
    ds = as_cr(load("MR_small.dcm"))
    ds.Rows = 65
    assert refusal(ds) is ReasonCode.DICOM_PIXEL_SIZE_MISMATCH
    ds = as_cr(load("MR_small.dcm"))
    ds.PixelData = ds.PixelData[:-100]
    assert refusal(ds) is ReasonCode.DICOM_PIXEL_SIZE_MISMATCH


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "OBXXXX1A.dcm"])
def test_colour_and_palette_are_refused(name: str) -> None:
    assert refusal(as_cr(load(name))) is ReasonCode.DICOM_UNSUPPORTED_PHOTOMETRIC


def test_unknown_transfer_syntax() -> None:
    ds = as_cr(load("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6.7")
    assert refusal(ds) is ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX


def test_twelve_bit_jpeg_needs_a_plugin_we_do_not_ship() -> None:
    ds = as_cr(load("JPGExtended.dcm"))  # real 12-bit JPEG; only GPL libjpeg decodes it
    assert refusal(ds) is ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX


def test_corrupt_rle_fails_to_decode() -> None:
    ds = as_cr(load("MR_small_RLE.dcm"))
    ds.PixelData = encapsulate([struct.pack("<16L", 1, 64, *([0] * 14)) + b"\x00" * 40])
    assert refusal(ds) is ReasonCode.DICOM_DECODE_FAILED


def test_corrupt_jpeg2000_is_refused_without_crashing_the_process() -> None:
    """GDCM aborts the whole process on this stream; the decoder must never reach it."""
    script = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from pydicom.data import get_testdata_file\n"
        "from pydicom.encaps import encapsulate\n"
        "import pydicom\n"
        "from clinic.ingest.errors import IngestError\n"
        "from clinic.ingest.xray import decode_dicom_xray\n"
        "ds = pydicom.dcmread(get_testdata_file('MR_small_jp2klossless.dcm'))\n"
        "ds.Modality = 'CR'; ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.1'\n"
        "ds.PixelData = encapsulate([b'\\xff\\x4f\\xff\\x51' + bytes(range(256)) * 4])\n"
        "try:\n"
        "    decode_dicom_xray(ds)\n"
        "except IngestError as exc:\n"
        "    print(exc.reason.value)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ReasonCode.DICOM_DECODE_FAILED.value


def test_constant_image_is_blank() -> None:
    ds = synthetic_cr(np.full((32, 32), 700, dtype=np.uint16), bits_stored=12)
    assert refusal(ds) is ReasonCode.IMAGE_BLANK


# --------------------------------------------------------------------------------------------
# decode time limit
# --------------------------------------------------------------------------------------------


def test_decode_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(ds: Dataset, syntax: str, **_options: object) -> npt.NDArray[Any]:
        time.sleep(5)
        raise AssertionError("not interrupted")

    monkeypatch.setattr(xray, "_decode_pixels", slow)
    handler_before = signal.getsignal(signal.SIGALRM)
    timer_before, _ = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout may have one armed
    started = time.monotonic()
    assert refusal(as_cr(load("MR_small.dcm")), timeout_s=0.2) is ReasonCode.DICOM_DECODE_TIMEOUT
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert signal.getsignal(signal.SIGALRM) is handler_before
    timer_after, _ = signal.getitimer(signal.ITIMER_REAL)
    if timer_before == 0:
        assert timer_after == 0
    else:  # the outer timer is re-armed with what it had left
        assert timer_before - elapsed - 1.0 < timer_after <= timer_before


def test_no_time_limit_outside_the_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    real = xray._decode_pixels

    def slow(ds: Dataset, syntax: Any, **options: bool) -> npt.NDArray[Any]:
        time.sleep(0.3)
        return real(ds, syntax, **options)

    monkeypatch.setattr(xray, "_decode_pixels", slow)
    results: list[Any] = []
    ds = as_cr(load("MR_small.dcm"))
    worker = threading.Thread(
        target=lambda: results.append(decode_dicom_xray(ds, timeout_s=0.05).pixels.shape)
    )
    worker.start()
    worker.join(10)
    assert results == [(64, 64)]


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------


def test_real_hannover_pngs(shared_data: Path) -> None:
    for path in hannover_pngs(shared_data, 3):
        decoded = read_raster_xray(path)
        with Image.open(path) as image:
            stored = np.asarray(image, dtype=np.uint8)
        assert decoded.source_format == "png"
        assert decoded.pixels.dtype == np.float32
        np.testing.assert_allclose(decoded.pixels, stored / 255.0, atol=1e-7)
        assert decoded.window is None
        assert (decoded.attributes["Rows"], decoded.attributes["Columns"]) == stored.shape
        assert decoded.attributes["BitsStored"] == 8
        assert decoded.attributes["PhotometricInterpretation"] == "MONOCHROME2"
        json.dumps(decoded.attributes)


def test_jpeg_export(tmp_path: Path, shared_data: Path) -> None:
    target = tmp_path / "cxr.jpg"
    with Image.open(hannover_pngs(shared_data, 1)[0]) as image:
        image.save(target, "JPEG", quality=95)
    decoded = read_raster_xray(target)
    with Image.open(target) as image:
        stored = np.asarray(image, dtype=np.uint8)
    assert decoded.source_format == "jpeg"
    assert decoded.attributes["LossyImageCompression"] == "01"
    np.testing.assert_allclose(decoded.pixels, stored / 255.0, atol=1e-7)


def test_rgb_is_reduced_to_luminance(tmp_path: Path, shared_data: Path) -> None:
    with Image.open(hannover_pngs(shared_data, 1)[0]) as image:
        gray = np.asarray(image, dtype=np.uint8)
    rgb = np.stack([gray, np.roll(gray, 1, axis=0), np.roll(gray, 1, axis=1)], axis=-1)
    target = tmp_path / "rgb.png"
    Image.fromarray(rgb, "RGB").save(target)
    decoded = read_raster_xray(target)
    expected = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.attributes["PhotometricInterpretation"] == "MONOCHROME2"


def test_sixteen_bit_png(tmp_path: Path) -> None:
    values = (np.arange(100 * 120, dtype=np.uint32) * 5).astype(np.uint16).reshape(100, 120)
    target = tmp_path / "sixteen.png"
    Image.fromarray(values).save(target)
    decoded = read_raster_xray(target)
    assert decoded.attributes["BitsStored"] == 16
    np.testing.assert_allclose(decoded.pixels, values / 65535.0, atol=1e-7)


def test_blank_png(tmp_path: Path) -> None:
    target = tmp_path / "blank.png"
    Image.fromarray(np.full((50, 50), 128, dtype=np.uint8)).save(target)
    with pytest.raises(IngestError) as caught:
        read_raster_xray(target)
    assert caught.value.reason is ReasonCode.IMAGE_BLANK


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header claims ``width`` x ``height`` (CRC fixed, data not)."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_absurd_declared_size_is_refused_before_decoding(tmp_path: Path) -> None:
    target = tmp_path / "huge.png"
    target.write_bytes(_png_with_declared_size(60000, 60000))
    with pytest.raises(IngestError) as caught:
        read_raster_xray(target)
    assert caught.value.reason is ReasonCode.IMAGE_DIMENSIONS_ABSURD


def test_max_pixels_applies(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(IngestError) as caught:
        read_raster_xray(hannover_pngs(shared_data, 1)[0], max_pixels=1000)
    assert caught.value.reason is ReasonCode.IMAGE_DIMENSIONS_ABSURD


def test_truncated_png(tmp_path: Path, shared_data: Path) -> None:
    data = hannover_pngs(shared_data, 1)[0].read_bytes()
    target = tmp_path / "cut.png"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError) as caught:
        read_raster_xray(target)
    assert caught.value.reason is ReasonCode.IMAGE_DECODE_FAILED


def test_text_named_png(tmp_path: Path) -> None:
    target = tmp_path / "notes.png"
    target.write_text("not an image\n" * 10)
    with pytest.raises(IngestError) as caught:
        read_raster_xray(target)
    assert caught.value.reason is ReasonCode.IMAGE_DECODE_FAILED


def test_empty_and_other_formats(tmp_path: Path, shared_data: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(IngestError) as caught:
        read_raster_xray(empty)
    assert caught.value.reason is ReasonCode.FILE_EMPTY
    gif = tmp_path / "image.gif"
    with Image.open(hannover_pngs(shared_data, 1)[0]) as image:
        image.save(gif, "GIF")
    with pytest.raises(IngestError) as caught:
        read_raster_xray(gif)
    assert caught.value.reason is ReasonCode.UNKNOWN_FORMAT


def test_png_copy_keeps_content_key(tmp_path: Path, shared_data: Path) -> None:
    source = hannover_pngs(shared_data, 1)[0]
    copy = tmp_path / "renamed.png"
    shutil.copy(source, copy)
    assert read_raster_xray(copy).raw_sha256 == read_raster_xray(source).raw_sha256


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("slope", "intercept"), [(1.0, 0.0), (0.5, -1024.0)])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_float32_window_matches_pydicom_reference(
    function: str, slope: float, intercept: float, photometric: str
) -> None:
    """The in-place float32 rendering equals pydicom's apply_windowing scaled to its range."""
    from pydicom.pixels.processing import apply_modality_lut, apply_windowing

    from clinic.ingest.xray import _render

    ds = Dataset()
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 900 * slope + intercept, 1500, function
    raw = np.random.default_rng(5).integers(0, 4096, size=(64, 80), dtype=np.uint16)
    shown, window = _render(raw, ds)
    values = apply_modality_lut(raw, ds)
    reference = np.asarray(apply_windowing(values, ds, 0), dtype=np.float64)
    ends = np.asarray(apply_windowing(np.array([-np.inf, np.inf]), ds, 0), dtype=np.float64)
    expected = (reference - ends[0]) / (ends[1] - ends[0])
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    assert window == (900 * slope + intercept, 1500.0)
    assert shown.dtype == np.float32
    np.testing.assert_allclose(shown, np.clip(expected, 0, 1), atol=2e-5)


def test_crash_contained_jpeg2000_decoding_equals_the_safe_decoders() -> None:
    """GDCM (allowed only in supervised workers) gives the same pixels as OpenJPEG."""
    for name in ("MR_small_jp2klossless.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        ds.Modality, ds.SOPClassUID = "CR", "1.2.840.10008.5.1.4.1.1.1"
        safe = decode_dicom_xray(ds)
        ds_fast = pydicom.dcmread(path)
        ds_fast.Modality, ds_fast.SOPClassUID = "CR", "1.2.840.10008.5.1.4.1.1.1"
        fast = decode_dicom_xray(ds_fast, crash_contained=True)
        assert fast.raw_sha256 == safe.raw_sha256
        np.testing.assert_array_equal(fast.pixels, safe.pixels)
