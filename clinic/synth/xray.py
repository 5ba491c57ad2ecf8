"""Chest radiograph phantoms, rendered with numpy and written as DICOM DX / CR files.

The image is an *attenuation* map in [0, 1] (1 = bone-white on a MONOCHROME2 display) built from
soft ellipses: body, two lungs cut by diaphragm domes, mediastinum, spine, heart, ribs. Findings
paint onto it: a wider heart (cardiomegaly; the AP view magnifies it too), a basal opacity with a
meniscus (effusion), a patchy lobar blob (consolidation) and a perihilar haze (edema).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from clinic.synth.conditions import SynthConfig

Field = npt.NDArray[np.floating[Any]]  # working arrays (float32 at run time)
Image = npt.NDArray[np.float32]
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


@dataclass(frozen=True)
class XrayStyle:
    """How one radiograph is stored: size, depth, polarity, view, codec."""

    rows: int
    cols: int
    bits_stored: int
    monochrome1: bool
    view: str  # "PA" | "AP"
    modality: str  # "DX" | "CR"
    compression: str  # "none" | "rle" | "j2k"
    rescale: tuple[float, float] | None  # (slope, intercept)
    pixel_spacing_mm: float


def sample_style(rng: np.random.Generator, cfg: SynthConfig) -> XrayStyle:
    """Mostly small images (fast), some 1024 px; the usual mix of depths, polarities and codecs."""
    rows = int(rng.choice([384, 448, 512, 640, 768, 1024], p=[0.2, 0.2, 0.25, 0.15, 0.1, 0.1]))
    cols = int(round(rows * rng.uniform(0.85, 1.15) / 8) * 8)
    bits = int(rng.choice([8, 10, 12, 14, 16], p=[0.1, 0.2, 0.35, 0.2, 0.15]))
    modality = "CR" if rng.random() < 0.35 else "DX"
    codec_draw = rng.random()
    compression = (
        "rle"
        if codec_draw < cfg.xray_rle_share
        else "j2k"
        if codec_draw < cfg.xray_rle_share + cfg.xray_j2k_share
        else "none"
    )
    rescale = None
    if bits > 8 and rng.random() < 0.3:
        rescale = (float(rng.choice([1.0, 0.5, 2.0])), float(rng.choice([0.0, -1024.0])))
    return XrayStyle(
        rows=rows,
        cols=cols,
        bits_stored=bits,
        monochrome1=bool(rng.random() < 0.3),
        view="AP" if rng.random() < 0.3 else "PA",
        modality=modality,
        compression=compression,
        rescale=rescale,
        pixel_spacing_mm=round(float(350.0 / rows * rng.uniform(0.95, 1.05)), 4),
    )


def _sigmoid(x: Field) -> Field:
    """Logistic function via tanh (no overflow), kept in float32."""
    y: Field = (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)
    return y


def _ellipse(
    u: Field, v: Field, center: tuple[float, float], radii: tuple[float, float], edge: float
) -> Field:
    """Soft ellipse mask: 1 inside, 0 outside, a sigmoid of width ``edge`` at the rim."""
    r = np.sqrt(((u - center[0]) / radii[0]) ** 2 + ((v - center[1]) / radii[1]) ** 2)
    return _sigmoid((1.0 - r) / edge)


def _lerp(base: Field, target: float | Field, weight: Field) -> Field:
    """Blend ``base`` towards ``target`` where ``weight`` (0..1) says so."""
    return (base + (target - base) * weight).astype(np.float32)


def _interp_matrix(n_out: int, n_in: int) -> Field:
    """Linear-interpolation weights (n_out, n_in) to stretch a coarse axis to a fine one."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def smooth_field(rng: np.random.Generator, rows: int, cols: int, cells: int) -> Field:
    """Smooth random texture: a coarse normal grid stretched bilinearly (two small matmuls)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return _interp_matrix(rows, cells) @ coarse @ _interp_matrix(cols, cells).T


def render_chest(
    rng: np.random.Generator,
    findings: dict[str, float],
    details: dict[str, str],
    rows: int,
    cols: int,
    view: str,
) -> tuple[Image, dict[str, float | str]]:
    """Render one chest radiograph; return the attenuation image and the geometry it used.

    Lung findings are painted before the heart and mediastinum, so (as on a real film) a
    retrocardiac opacity hides behind the heart shadow.
    """
    v = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) / rows
    u = (np.arange(cols, dtype=np.float32)[None, :] + 0.5) / cols
    tw = float(rng.uniform(0.93, 1.07))  # thorax width factor (habitus)
    lung_dx, lung_r = 0.2 * tw, 0.165 * tw
    dome = 0.76 + float(rng.normal(0.0, 0.015))

    body = _ellipse(u, v, (0.5, 0.58), (0.45 * tw, 0.62), 0.04)
    img = _lerp(np.full((rows, cols), 0.04, np.float32), 0.5, body)
    lungs = np.zeros((rows, cols), np.float32)
    for side in (-1.0, 1.0):  # image left = patient right
        cu = 0.5 + side * lung_dx
        lung = _ellipse(u, v, (cu, 0.46), (lung_r, 0.33), 0.05)
        below_dome = dome - 0.06 * (1.0 - ((u - cu) / lung_r) ** 2)
        lungs = np.maximum(lungs, lung * _sigmoid((below_dome - v) / 0.006))
    img = _lerp(img, 0.13 + 0.025 * smooth_field(rng, rows, cols, 14), lungs)
    img = _add_findings(rng, img, u, v, lungs, findings, details, (lung_dx, lung_r, dome))

    ribs = _sigmoid((np.cos(2 * np.pi * (v - 1.2 * (u - 0.5) ** 2) / 0.075) - 0.5) / 0.1)
    img = img + 0.06 * ribs * body * _sigmoid((dome - v) / 0.02)
    mediastinum = _sigmoid((0.075 - np.abs(u - 0.5)) / 0.006) * _sigmoid((0.62 - v) / 0.01)
    img = _lerp(img, 0.56, mediastinum * _sigmoid((v - 0.08) / 0.01))
    img = img + 0.06 * _sigmoid((0.03 - np.abs(u - 0.5)) / 0.004) * body  # spine

    ctr = 0.45 + float(rng.normal(0.0, 0.025)) + 0.17 * findings["cardiomegaly"]
    ctr *= 1.12 if view == "AP" else 1.0  # AP films magnify the heart
    heart_rx = ctr * (lung_dx + lung_r)
    img = _lerp(img, 0.58, _ellipse(u, v, (0.5 + 0.22 * heart_rx, 0.64), (heart_rx, 0.13), 0.03))

    img = img + rng.normal(0.0, 0.012, size=(rows, cols)).astype(np.float32)
    geometry: dict[str, float | str] = {"cardiothoracic_ratio": round(ctr, 4), "view": view}
    return np.clip(img, 0.0, 1.0).astype(np.float32), geometry


def _add_findings(
    rng: np.random.Generator,
    img: Field,
    u: Field,
    v: Field,
    lungs: Field,
    findings: dict[str, float],
    details: dict[str, str],
    anatomy: tuple[float, float, float],
) -> Field:
    """Paint effusion, consolidation and edema into the lung fields, scaled by their strength."""
    lung_dx, lung_r, dome = anatomy
    rows, cols = img.shape
    if (s := findings["pleural_effusion"]) > 0:
        sides = {"right": (-1.0,), "left": (1.0,), "bilateral": (-1.0, 1.0)}
        for side in sides[details["effusion_side"]]:  # patient's right is image left
            cu = 0.5 + side * lung_dx
            lateral = np.clip(side * (u - cu) / lung_r, 0.0, 1.0)  # meniscus climbs laterally
            level = dome - 0.05 - 0.18 * s - 0.06 * s * lateral
            near = _sigmoid((lung_r * 1.1 - np.abs(u - cu)) / 0.01)
            img = _lerp(img, 0.5, 0.92 * _sigmoid((v - level) / 0.012) * near * lungs)
    if (s := findings["consolidation"]) > 0:
        lobe = details["consolidation_lobe"]
        side = -1.0 if lobe.startswith("right") else 1.0
        cv = (0.35 if lobe.endswith("upper") else 0.6) + float(rng.normal(0, 0.03))
        cu = 0.5 + side * (lung_dx + 0.05 + float(rng.normal(0.0, 0.02)))
        blob = _ellipse(u, v, (cu, cv), (0.06 + 0.06 * s, 0.07 + 0.06 * s), 0.2)
        patch = np.clip(0.6 + 0.5 * smooth_field(rng, rows, cols, 24), 0.0, 1.0)
        img = img + 0.4 * s * blob * patch * lungs
    if (s := findings["edema"]) > 0:
        haze = np.exp(-(((np.abs(u - 0.5) - 0.12) / 0.09) ** 2) - ((v - 0.5) / 0.16) ** 2)
        img = img + 0.2 * s * haze.astype(np.float32) * lungs
    return img


def _stored_pixels(image: Image, style: XrayStyle) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Quantise to BitsStored; MONOCHROME1 stores the inverse (white = low values)."""
    top = float(2**style.bits_stored - 1)
    values = np.rint(image * top)
    if style.monochrome1:
        values = top - values
    stored: npt.NDArray[np.unsignedinteger[Any]]
    stored = values.astype(np.uint8 if style.bits_stored == 8 else np.uint16)
    return stored


def build_dataset(image: Image, style: XrayStyle, header: dict[str, str]) -> Dataset:
    """A DX (For Presentation) or CR dataset with file meta, pixels and the given header.

    ``header`` maps DICOM keywords to values: the synthetic PHI and UIDs of this radiograph.
    """
    sop_class = DX_FOR_PRESENTATION if style.modality == "DX" else CR_IMAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(header["SOPInstanceUID"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.SeriesDate = ds.ContentDate = header["StudyDate"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.Modality = style.modality
    ds.Manufacturer = "clinic-synth"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = style.view
    ds.StudyID = "1"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # displayed as if facing the patient, both views
    if style.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [style.pixel_spacing_mm] * 2
    ds.PixelSpacing = [style.pixel_spacing_mm] * 2
    _set_display(ds, style)
    ds.set_pixel_data(
        _stored_pixels(image, style),
        "MONOCHROME1" if style.monochrome1 else "MONOCHROME2",
        style.bits_stored,
        generate_instance_uid=False,
    )
    return ds


def _set_display(ds: Dataset, style: XrayStyle) -> None:
    """Window (in rescaled units) that shows the lungs; rescale tags only where chosen."""
    top = 2**style.bits_stored - 1
    slope, intercept = style.rescale if style.rescale is not None else (1.0, 0.0)
    center, width = 0.42 * top, 0.8 * top
    if style.monochrome1:
        center = top - center
    ds.WindowCenter = round(slope * center + intercept, 1)
    ds.WindowWidth = round(slope * width, 1)
    if style.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"


def write_xray(path: Path, image: Image, style: XrayStyle, header: dict[str, str]) -> None:
    """Write the file (preamble + meta), compressed with RLE or JPEG 2000 Lossless if chosen."""
    ds = build_dataset(image, style, header)
    if style.compression != "none":
        codec = RLELossless if style.compression == "rle" else JPEG2000Lossless
        ds.compress(codec, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
