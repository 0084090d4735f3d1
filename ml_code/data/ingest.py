"""Validation for raw dermoscopy uploads: metadata rows and image files.

The ``raw_images`` asset calls these functions; they decide what enters the
content-addressed raw store and what goes to quarantine. The rule is that one
bad row or file never stops a batch: it is quarantined with a reason that says
which column or file, what value, and how to fix it. Only a metadata file whose
layout cannot be recognised at all raises (``MetadataError``).

Two public layouts are understood:

* ``ham10000``: ``HAM10000_metadata.csv`` with
  ``lesion_id,image_id,dx,dx_type,age,sex,localization`` (Tschandl et al. 2018).
* ``isic``: an ISIC Archive export ``metadata.csv`` with ``isic_id`` and either the
  legacy ``diagnosis`` column or the current hierarchy ``diagnosis_1`` ..
  ``diagnosis_5``, plus optional ``age_approx``, ``sex``, ``anatom_site_general``,
  ``lesion_id``, ``patient_id``, ``diagnosis_confirm_type``, ``image_type``.

Both are mapped onto the internal manifest (docs/ARCHITECTURE.md, "Raw manifest"). Diagnoses map
through the one explicit table of ``ml_code.data.diagnosis``; image files are accepted or refused by
the image policy that preprocessing and serving share (``ml_code.package.image_policy``), and each
accepted image gets a perceptual hash (``phash``) so near-duplicates can be kept in one split.
Privacy: an ISIC ``patient_id`` is replaced by ``patient_ref``, a salted sha256
prefix, so splits can still group a patient's lesions while the raw identifier
never leaves this module (it is not in the manifest, the quarantine or any message).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ml_code import CLASSES
from ml_code.data import diagnosis, scrub
from ml_code.data.csv_text import csv_text
from ml_code.data.near_duplicates import phash_hex
from ml_code.package import image_policy

Layout = Literal["ham10000", "isic"]

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id", "lesion_id", "patient_ref", "dx", "dx_type", "age", "sex", "localization",
    "image_key", "sha256", "format", "width", "height", "source_layout", "phash",
)
"""Column order of ``manifest.csv`` (docs/ARCHITECTURE.md). ``phash`` (last, so older readers that
select columns by name are unaffected) is the 256-bit perceptual hash of the decoded image, 64 hex
digits (``ml_code.data.near_duplicates``); the splitter joins near-duplicates into one group."""

METADATA_COLUMNS: tuple[str, ...] = (
    "image_id", "lesion_id", "patient_ref", "dx", "dx_type", "age", "sex", "localization", "source_layout",
)
"""What ``normalise_metadata`` returns: the manifest columns that come from metadata."""

QUARANTINE_COLUMNS: tuple[str, ...] = ("image_id", "stage", "reason")

HAM10000_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
ISIC_DIAGNOSIS_LEVELS: tuple[str, ...] = tuple(f"diagnosis_{i}" for i in range(1, 6))

IMAGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
"""Image ids become file names: letters, digits, ``_``, ``.``, ``-`` only (no paths)."""

AGE_RANGE = (0.0, 120.0)
SEX_VALUES = ("male", "female", "unknown")

# --------------------------------------------------------------------------------------
# Diagnosis mapping onto the seven HAM10000 classes: ml_code.data.diagnosis (one table for
# ingestion, scoring and monitoring labels). DIAGNOSIS_MAP is kept for readers of the flat terms.
# --------------------------------------------------------------------------------------

DIAGNOSIS_MAP: dict[str, str] = diagnosis.FLAT_TERMS
"""Single diagnosis terms -> class (``ml_code.data.diagnosis.FLAT_TERMS``); hierarchy paths are
mapped by ``ml_code.data.diagnosis.HIERARCHY_RULES``, never by a parent's class."""

DX_TYPE_MAP: dict[str, str] = {
    "histopathology": "histo",
    "histo": "histo",
    "serial imaging showing no change": "follow_up",
    "follow_up": "follow_up",
    "single image expert consensus": "consensus",
    "consensus": "consensus",
    "confocal microscopy with consensus dermoscopy": "confocal",
    "confocal": "confocal",
    "synthetic": "synthetic",
}
"""How the diagnosis was confirmed, in HAM10000's vocabulary; anything else -> 'unknown'."""

_SEX_MAP = {"male": "male", "m": "male", "female": "female", "f": "female"}


class MetadataError(ValueError):
    """The metadata file as a whole is unusable (no recognisable layout)."""


class ImageRejected(ValueError):
    """One image file failed a check; ``reason`` says which check and how to fix it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------

ISIC_INPUT_SCHEMA = pa.DataFrameSchema(
    {"isic_id": pa.Column(nullable=True)},
    checks=[
        pa.Check(
            lambda df: "diagnosis" in df.columns or any(c in df.columns for c in ISIC_DIAGNOSIS_LEVELS),
            error="ISIC metadata needs a 'diagnosis' column or the 'diagnosis_1'..'diagnosis_5' hierarchy",
        )
    ],
    strict=False,
    name="ISIC Archive metadata",
)

METADATA_SCHEMA = pa.DataFrameSchema(
    {
        "image_id": pa.Column(str, pa.Check.str_matches(IMAGE_ID_PATTERN), unique=True),
        "lesion_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "patient_ref": pa.Column(str, pa.Check.str_matches(r"^([0-9a-f]{16})?$")),
        "dx": pa.Column(str, pa.Check.isin(CLASSES)),
        "dx_type": pa.Column(str),
        "age": pa.Column(float, pa.Check.in_range(*AGE_RANGE), nullable=True),
        "sex": pa.Column(str, pa.Check.isin(SEX_VALUES)),
        "localization": pa.Column(str, pa.Check.str_length(min_value=1)),
        "source_layout": pa.Column(str, pa.Check.isin(("ham10000", "isic"))),
    },
    strict=True,
    ordered=True,
    name="normalised metadata",
)
"""Output of ``normalise_metadata``: every row here is safe to ingest."""

MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        **{name: METADATA_SCHEMA.columns[name] for name in METADATA_COLUMNS if name != "source_layout"},
        "image_key": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{2}/[0-9a-f]{64}\.(jpg|png)$")),
        "sha256": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$")),
        "format": pa.Column(str, pa.Check.isin(("JPEG", "PNG"))),
        "width": pa.Column(int, pa.Check.gt(0)),
        "height": pa.Column(int, pa.Check.gt(0)),
        "source_layout": METADATA_SCHEMA.columns["source_layout"],
        "phash": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$")),
    },
    strict=True,
    ordered=True,
    name="raw manifest",
)
"""The internal ``manifest.csv`` (docs/ARCHITECTURE.md): columns in ``MANIFEST_COLUMNS`` order."""

IMAGE_SCHEMA = pa.DataFrameSchema(
    {name: column for name, column in MANIFEST_SCHEMA.columns.items() if name not in METADATA_SCHEMA.columns},
    strict=False,
    name="raw manifest, image columns",
)
"""The manifest's image columns alone: what :func:`manifest_frame` checks when its metadata rows
have just passed ``METADATA_SCHEMA`` (checking them twice was a third of a rerun's manifest)."""


# --------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------


def detect_layout(df: pd.DataFrame) -> Layout:
    """Tell a HAM10000 metadata table from an ISIC Archive export, or raise ``MetadataError``."""
    cols = {str(c).strip() for c in df.columns}
    if "isic_id" in cols:
        try:
            ISIC_INPUT_SCHEMA.validate(df.rename(columns=lambda c: str(c).strip()).head(0))
        except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise MetadataError(
                "metadata has 'isic_id' (ISIC Archive layout) but no diagnosis column: expected 'diagnosis' "
                f"or 'diagnosis_1'..'diagnosis_5'. Columns found: {sorted(cols)}. Re-export the metadata "
                "from the ISIC Archive with the diagnosis fields included."
            ) from exc
        return "isic"
    missing = [c for c in HAM10000_COLUMNS if c not in cols]
    if not missing:
        return "ham10000"
    raise MetadataError(
        "metadata layout not recognised. HAM10000 needs columns "
        f"{list(HAM10000_COLUMNS)} (missing: {missing}); an ISIC Archive export needs 'isic_id' and "
        f"'diagnosis' or 'diagnosis_1'..'diagnosis_5'. Columns found: {sorted(cols)}"
        + (f" (read with {describe_dialect(df)}; separators tried: comma, semicolon, tab, pipe)."
           if describe_dialect(df) else ".")
    )


def _norm_text(value: object) -> str:
    """Lower-case, strip and collapse whitespace; missing -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return re.sub(r"\s+", " ", str(value)).strip().lower()


def _raw_text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def patient_ref(patient_id: str, salt: str) -> str:
    """Salted sha256 prefix (16 hex) of a patient id; '' when there is no id.

    The salt is a deployment secret, so the reference cannot be reversed by
    hashing candidate ids; 64 bits keep collisions negligible for any cohort.
    """
    if not patient_id:
        return ""
    return hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()[:16]


def map_diagnosis(levels: list[str] | tuple[str, ...] = (), legacy: object = None, *,
                  other_class: str | None = None) -> diagnosis.DiagnosisMapping:
    """One row's diagnosis -> class, by ``ml_code.data.diagnosis.map_diagnosis``: ``levels`` is the
    ISIC ``diagnosis_1..5`` hierarchy (general -> specific), ``legacy`` a single term (HAM10000
    ``dx`` or ISIC ``diagnosis``). Unmapped -> ``dx`` None (or ``other_class``) and a reason
    naming the full path. Memoised: a dataset has a handful of distinct diagnoses, and mapping one
    (normalising and matching the terms) was a fifth of a 10,000-row rerun's ingestion."""
    try:
        return _mapping(tuple(levels), legacy, other_class)
    except TypeError:  # an unhashable value: map it directly
        return diagnosis.map_diagnosis(levels, legacy, other_class=other_class)


@lru_cache(maxsize=4096)
def _mapping(levels: tuple, legacy: object, other_class: str | None) -> diagnosis.DiagnosisMapping:
    return diagnosis.map_diagnosis(levels, legacy, other_class=other_class)


def _parse_age(value: object) -> tuple[float, str | None]:
    """(age, problem): missing -> NaN; non-numeric or outside 0..120 -> a problem."""
    text = _raw_text(value)
    if text == "" or text.lower() in ("nan", "unknown", "none", "null"):
        return math.nan, None
    try:
        age = float(text)
    except ValueError:
        return math.nan, f"age {text!r} is not a number; give age in years (0-120) or leave it empty"
    if not math.isfinite(age) or not (AGE_RANGE[0] <= age <= AGE_RANGE[1]):
        return math.nan, f"age {text!r} is outside {AGE_RANGE[0]:.0f}-{AGE_RANGE[1]:.0f} years; fix it or leave it empty"
    return age, None


def normalise_metadata(df: pd.DataFrame, layout: Layout, salt: str,
                       other_class: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Map a HAM10000 or ISIC table onto the internal schema; split good rows from quarantine.

    Returns ``(good, quarantined)``: ``good`` has ``METADATA_COLUMNS`` and passes
    ``METADATA_SCHEMA``; ``quarantined`` has ``image_id, stage, reason`` with one row
    per rejected source row. Row-level problems never raise.

    Field rules: ``sex`` -> male/female/unknown; ``age`` numeric years or NaN when
    missing (out-of-range or non-numeric ages quarantine the row); ``localization``
    lower-case or 'unknown'; a missing ISIC ``lesion_id`` makes the image its own
    lesion (``lesion_id = isic_id``), which is the conservative choice for grouped
    splits only if the archive really has one image per unlabelled lesion;
    ``patient_id`` becomes ``patient_ref`` and is then dropped. ISIC rows whose
    ``image_type`` is present and not dermoscopic are quarantined: the model is
    trained on dermoscopy only.

    Diagnoses map through ``ml_code.data.diagnosis``: a term the table does not list is
    quarantined with its full hierarchy path as the reason, or, when ``other_class`` is given
    (e.g. ``"other"``; default off), kept with that class. It never takes a parent's class.
    """
    if other_class is not None and (not other_class or other_class in CLASSES):
        raise ValueError(f"other_class {other_class!r} must be a new, non-empty class name, not one of {list(CLASSES)}")
    if layout not in ("ham10000", "isic"):
        raise MetadataError(f"unknown layout {layout!r}; expected 'ham10000' or 'isic' (see detect_layout)")
    df = df.rename(columns=lambda c: str(c).strip())
    detected = detect_layout(df)
    if detected != layout:
        raise MetadataError(f"metadata looks like the {detected!r} layout, not {layout!r}")
    columns = _layout_columns(df, layout)
    # A dataset has a handful of distinct sexes, sites, diagnosis types and ages: each is
    # normalised once per distinct value, not once per row (a third of a 10,000-row rerun's
    # metadata pass went to re-normalising the same few strings).
    for key in ("dx_type", "sex", "site", "image_type"):
        columns[key] = _per_value(_norm_text, columns[key])
    columns["age"] = _per_value(_parse_age, columns["age"])
    columns["mapped"] = _per_value(
        lambda terms: map_diagnosis([_raw_text(t) for t in terms[0]], _raw_text(terms[1]), other_class=other_class),
        list(zip(map(tuple, columns["hierarchy"]), columns["legacy"])))
    columns["pseudonym"] = _per_value(lambda ids: _row_patient_ref(ids[0], ids[1], salt),
                                      list(zip(columns.get("patient_ref") or [None] * len(df), columns["patient"])))
    columns["image_id"] = [_raw_text(v) for v in columns["image_id"]]
    rows: list[tuple[int, tuple | None, str]] = []
    for i in range(len(df)):
        row, problem = _normalise_row(columns, i, layout)
        rows.append((i + 2, row, problem))  # 1-based line after the header: what an editor shows
    good_rows, quarantine = _drop_duplicates(rows, columns["image_id"])
    good = pd.DataFrame(good_rows, columns=list(METADATA_COLUMNS))
    good["age"] = pd.to_numeric(good["age"], errors="coerce").astype(float)
    for c in METADATA_COLUMNS:
        if c != "age":
            good[c] = good[c].astype(str)
    schema = METADATA_SCHEMA
    if other_class is not None:
        schema = schema.update_column("dx", checks=[pa.Check.isin((*CLASSES, other_class))])
    good = schema.validate(good.reset_index(drop=True))
    return good, quarantine_frame(quarantine)


def _layout_columns(df: pd.DataFrame, layout: Layout) -> dict[str, list[object]]:
    """The source columns of each internal field, as lists (absent columns -> None values)."""
    def col(name: str) -> list[object]:
        return df[name].tolist() if name in df.columns else [None] * len(df)

    if layout == "ham10000":
        return {"image_id": col("image_id"), "lesion_id": col("lesion_id"),
                "hierarchy": [[] for _ in range(len(df))], "legacy": col("dx"), "dx_type": col("dx_type"),
                "age": col("age"), "sex": col("sex"), "site": col("localization"),
                "patient": [None] * len(df), "image_type": [None] * len(df),
                # optional: a reference DermaOps made itself (labelled captures, dermaops_services.labelling)
                "patient_ref": col("patient_ref")}
    levels = [col(c) for c in ISIC_DIAGNOSIS_LEVELS]  # general -> specific; absent -> None
    return {"image_id": col("isic_id"), "lesion_id": col("lesion_id"),
            "hierarchy": [[vals[i] for vals in levels] for i in range(len(df))], "legacy": col("diagnosis"),
            "dx_type": col("diagnosis_confirm_type"), "age": col("age_approx"), "sex": col("sex"),
            "site": col("anatom_site_general"), "patient": col("patient_id"), "image_type": col("image_type")}


def _per_value(fn: Callable[[object], Any], values: list[object]) -> list[Any]:
    """``[fn(v) for v in values]``, calling ``fn`` once per distinct value (``fn`` must be pure)."""
    done: dict[object, Any] = {}
    out = []
    for value in values:
        try:
            out.append(done[value])
        except KeyError:
            done[value] = result = fn(value)
            out.append(result)
        except TypeError:  # unhashable
            out.append(fn(value))
    return out


_IMAGE_ID_RE = re.compile(IMAGE_ID_PATTERN)


def _normalise_row(columns: dict[str, list[object]], i: int, layout: Layout) -> tuple[tuple | None, str]:
    """(row in the internal schema, as a tuple in :data:`METADATA_COLUMNS` order, "") or (None,
    why the row is quarantined). ``columns`` as :func:`normalise_metadata` prepares them:
    ``image_id`` already through :func:`_raw_text`; ``dx_type``, ``sex``, ``site`` and
    ``image_type`` through :func:`_norm_text`, ``age`` through :func:`_parse_age`, the diagnosis
    mapped (``mapped``) and the patient pseudonymised (``pseudonym``). Tuples, not dicts: the
    frame is built from 10,000 of them on every rerun."""
    id_column = "image_id" if layout == "ham10000" else "isic_id"
    image_id = columns["image_id"][i]
    if not image_id:
        return None, f"'{id_column}' is empty; every row needs the id of its image file"
    if not _IMAGE_ID_RE.match(image_id):
        return None, (f"'{id_column}' {image_id!r} is not a safe file name (letters, digits, '_', '.', '-' only, "
                      "at most 128 characters); rename the image and its row")
    mapped = columns["mapped"][i]
    if mapped.dx is None:
        return None, mapped.reason
    age, age_problem = columns["age"][i]
    if age_problem:
        return None, age_problem
    image_type = columns["image_type"][i]
    if image_type and image_type != "dermoscopic":
        return None, f"image_type {image_type!r} is not dermoscopic; only dermoscopy images are accepted"
    lesion_id = _raw_text(columns["lesion_id"][i])
    if not lesion_id:
        if layout == "ham10000":
            return None, "'lesion_id' is empty; HAM10000 rows need the lesion they belong to (splits group by it)"
        lesion_id = image_id  # ISIC: an image with no lesion id is its own lesion
    return (image_id, lesion_id, columns["pseudonym"][i], mapped.dx, DX_TYPE_MAP.get(columns["dx_type"][i], "unknown"),
            age, _SEX_MAP.get(columns["sex"][i], "unknown"), columns["site"][i] or "unknown", layout), ""


def _row_patient_ref(given_ref: object, patient_id: object, salt: str) -> str:
    """A row's pseudonymous patient reference, from its ``patient_ref`` and ``patient_id`` cells.
    An optional ``patient_ref`` column (HAM10000 layout) that already holds one (16 lower-case
    hex, as :func:`patient_ref` makes) is kept, so a batch DermaOps writes itself groups with the
    same patient's earlier lesions without the raw id being stored; any other value there is
    treated as a raw id and pseudonymised."""
    given = _raw_text(given_ref)
    if re.fullmatch(r"[0-9a-f]{16}", given):
        return given
    return patient_ref(given or _raw_text(patient_id), salt)


_AGE_AT = METADATA_COLUMNS.index("age")


def _same_row(a: tuple, b: tuple) -> bool:
    return all(x == y or (k == _AGE_AT and math.isnan(x) and math.isnan(y)) for k, (x, y) in enumerate(zip(a, b)))


def _drop_duplicates(rows: list[tuple[int, tuple | None, str]],
                     image_ids: list[str]) -> tuple[list[tuple], list[dict[str, str]]]:
    """Good rows and quarantine: a repeated image id with the same metadata keeps the first row;
    with different metadata, every row of that id is quarantined until one is removed.
    ``image_ids``: each source row's id through :func:`_raw_text`."""
    kept: dict[str, tuple[int, tuple]] = {}
    quarantine: list[dict[str, str]] = []
    conflicted: set[str] = set()
    for line, row, problem in rows:
        image_id = image_ids[line - 2]
        if row is None:
            quarantine.append({"image_id": image_id, "stage": "metadata", "reason": f"row {line}: {problem}"})
            continue
        if image_id not in kept:
            kept[image_id] = (line, row)
            continue
        first = kept[image_id][0]
        if _same_row(kept[image_id][1], row):
            reason = (f"duplicate of row {first} (same image_id {image_id!r}, same metadata); the first row is "
                      "kept, delete this one")
        else:
            conflicted.add(image_id)
            reason = (f"image_id {image_id!r} also appears at row {first} with different metadata; both rows "
                      "are quarantined until one is removed")
        quarantine.append({"image_id": image_id, "stage": "metadata", "reason": f"row {line}: {reason}"})
    for image_id in sorted(conflicted):
        quarantine.append({"image_id": image_id, "stage": "metadata",
                           "reason": f"row {kept[image_id][0]}: image_id {image_id!r} appears again later with "
                                     "different metadata; both rows are quarantined until one is removed"})
    return [row for image_id, (_, row) in kept.items() if image_id not in conflicted], quarantine


def quarantine_frame(rows: list[dict[str, str]] | None = None) -> pd.DataFrame:
    """A quarantine table (``image_id, stage, reason``), empty when ``rows`` is empty."""
    return pd.DataFrame(rows or [], columns=list(QUARANTINE_COLUMNS)).astype(str)


CSV_DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
"""Separators a metadata export may use: spreadsheets in European locales write ``;`` (the comma
is their decimal mark), some exports tabs or pipes. Nothing else is guessed."""

NUMERIC_METADATA_COLUMNS: tuple[str, ...] = ("age", "age_approx")
"""Columns read as numbers, where a decimal comma (``80,0``) is accepted as ``80.0``."""

_DELIMITER_NAMES = {",": "comma (,)", ";": "semicolon (;)", "\t": "tab", "|": "pipe (|)"}
_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d*\s*$")
_KNOWN_HEADER_NAMES = frozenset([*HAM10000_COLUMNS, "isic_id", "diagnosis", *ISIC_DIAGNOSIS_LEVELS,
                                 "age_approx", "anatom_site_general", "patient_id"])


def _header_delimiter(header: str) -> str:
    """The separator that splits the header line into the most known column names (then the most
    columns): robust where csv.Sniffer is not, e.g. on one-row files or ids containing commas."""
    def score(sep: str) -> tuple[int, int]:
        names = [n.strip().strip('"').strip() for n in header.split(sep)]
        return sum(n in _KNOWN_HEADER_NAMES for n in names), len(names)

    best = max(CSV_DELIMITERS, key=score)  # max keeps the first on ties: ',' wins when nothing splits
    return best


def read_metadata(path: str | Path, data: bytes | None = None) -> pd.DataFrame:
    """Read a metadata CSV as text columns (no type guessing: ids like '0001' stay strings).

    ``data`` gives the file's bytes when it does not live on this filesystem (an S3 object);
    ``path`` then only names it in errors. Spreadsheet exports are read as they come: a UTF-8
    byte-order mark is dropped, CRLF line ends are fine, the separator is detected among
    ``CSV_DELIMITERS`` from the header line, and decimal commas in ``age``/``age_approx``
    (``80,0``, written by European-locale spreadsheets) become ``80.0``. What was detected is
    kept in ``df.attrs["csv_dialect"]`` so errors and logs can name it. A file that is not
    UTF-8 text or not CSV raises ``MetadataError`` saying what was found and how to re-export."""
    path = Path(path)
    raw = data if data is not None else path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise MetadataError(f"{path.name} is not a text file (it contains NUL bytes: a spreadsheet workbook, an "
                            "image or a damaged file?); export the sheet as CSV UTF-8")
    try:
        text = raw.decode("utf-8-sig")  # utf-8-sig drops a leading byte-order mark
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                            "export it as 'CSV UTF-8' (a spreadsheet's plain 'CSV' may use a local code page)") from exc
    header = text.lstrip("\r\n").split("\n", 1)[0]
    sep = _header_delimiter(header)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MetadataError(f"cannot parse {path.name} as CSV with {_DELIMITER_NAMES[sep]} separators ({exc}); "
                            "export it as CSV UTF-8 with one header row") from exc
    df.columns = [str(c).strip() for c in df.columns]
    decimal_comma = False
    for column in NUMERIC_METADATA_COLUMNS:
        if column in df.columns:
            values = df[column]
            commas = values.notna() & values.astype(str).str.match(_DECIMAL_COMMA)
            if commas.any():
                decimal_comma = True
                df.loc[commas, column] = values[commas].str.replace(",", ".", regex=False)
    df.attrs["csv_dialect"] = {"delimiter": sep, "decimal_comma": decimal_comma}
    return df


def describe_dialect(df: pd.DataFrame) -> str:
    """'semicolon (;) separators, decimal commas' for logs and errors ('' when unknown)."""
    dialect = df.attrs.get("csv_dialect")
    if not dialect:
        return ""
    return _DELIMITER_NAMES[dialect["delimiter"]] + " separators" + (
        ", decimal commas" if dialect["decimal_comma"] else "")


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLimits:
    """Acceptance limits for one image file, on top of the image policy.

    What is read and how (formats, modes, the pixel cap, orientation, colour) is
    ``ml_code.package.image_policy``'s, the same at ingestion, preprocessing and serving;
    these are the dataset's own quality limits (file size, side lengths after orientation)."""

    max_bytes: int = 20 * 1024 * 1024
    min_side: int = 32
    max_side: int = 8192
    max_pixels: int = image_policy.MAX_PIXELS
    formats: tuple[str, ...] = image_policy.ACCEPTED_FORMATS


class ImageInfo(NamedTuple):
    """What ingestion records about an accepted image.

    ``format`` is the policy's (``JPEG`` for a camera MPO file); ``width``/``height`` are after
    the EXIF orientation; ``phash`` is the decoded image's perceptual hash (64 hex digits).
    A named tuple, not a frozen dataclass: a rerun rebuilds one per remembered file from the
    memo, and a frozen dataclass's ``__init__`` cost ten times as much (half the memo's load)."""

    format: str
    width: int
    height: int
    sha256: str
    extension: str
    phash: str = ""

    @property
    def image_key(self) -> str:
        """Content-addressed key under the raw images prefix: ``<sha[:2]>/<sha><ext>``."""
        return image_key(self.sha256, self.extension)


_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png"}


def image_key(sha256: str, extension: str) -> str:
    return f"{sha256[:2]}/{sha256}{extension}"


def inspect_image(data: bytes, name: str, limits: ImageLimits = ImageLimits()) -> ImageInfo:
    """Check one image file and describe it, or raise ``ImageRejected`` saying why.

    The decision is the image policy's (``ml_code.package.image_policy``), so ingestion accepts
    exactly what preprocessing decodes and the endpoint scores, with the same reasons (prefixed
    with the file name). Checks, cheapest first: byte size; header (recognisable, format, pixel
    mode, pixel cap); side lengths after orientation; full decode of the first frame (catches
    truncated files); then the perceptual hash of the decoded image.
    """
    size = len(data)
    if size > limits.max_bytes:
        raise ImageRejected(
            f"{name}: file is {size / 1e6:.1f} MB, over the {limits.max_bytes / 1e6:.1f} MB limit; "
            "downscale or recompress it"
        )
    try:
        facts = image_policy.probe(data, max_pixels=limits.max_pixels)
        if facts.format not in limits.formats:
            raise image_policy.ImageRefused(
                f"format is {facts.container}; this dataset accepts {', '.join(limits.formats)}: convert it"
            )
        width, height = facts.width, facts.height
        if min(width, height) < limits.min_side:
            raise ImageRejected(
                f"{name}: {width}x{height} px is smaller than the {limits.min_side} px minimum side; "
                "upload the original-resolution image"
            )
        if max(width, height) > limits.max_side:
            raise ImageRejected(
                f"{name}: {width}x{height} px exceeds the {limits.max_side} px maximum side; downscale it"
            )
        img, facts = image_policy.open_with_facts(data, max_pixels=limits.max_pixels)
    except image_policy.ImageRefused as exc:
        raise ImageRejected(f"{name}: {exc.reason}") from None
    with img:
        phash = phash_hex(img)
    return ImageInfo(
        format=facts.format,
        width=int(facts.width),
        height=int(facts.height),
        sha256=hashlib.sha256(data).hexdigest(),
        extension=_EXTENSIONS[facts.format],
        phash=phash,
    )


def validation_version(limits: ImageLimits = ImageLimits()) -> str:
    """What the verdict on an image file depends on besides its bytes: the source of the modules
    that decide it (this one, the image policy, the scrubber), of the perceptual hash function
    (``near_duplicates.phash_hex`` and its hash size; not the rest of that module, whose pair
    search works on stored hashes), the versions of Pillow and imagehash, and ``limits``.
    Ingestion remembers accepted files by the sha256 of their bytes under this version
    (``dermaops_services.ingestion``), so a rerun over the same files decodes none of them, and
    any change here makes it decode everything again. 16 hex."""
    import inspect
    import sys
    from importlib.metadata import version

    from ml_code.data import near_duplicates

    h = hashlib.sha256()
    for module in (__name__, "ml_code.data.scrub", image_policy.__name__):
        h.update(Path(sys.modules[module].__file__ or "").read_bytes())
    h.update(inspect.getsource(phash_hex).encode())
    h.update(f"hash_size {near_duplicates.HASH_SIZE} hex {near_duplicates.HASH_HEX}\0".encode())
    h.update(f"Pillow {version('pillow')} imagehash {version('imagehash')} {limits!r}".encode())
    return h.hexdigest()[:16]


def scrub_image(data: bytes, info: ImageInfo, limits: ImageLimits = ImageLimits()) -> tuple[bytes, ImageInfo]:
    """The bytes to store for an accepted image and its ``ImageInfo`` re-described for them.

    Metadata (EXIF dates, GPS, serials, maker notes, XMP, IPTC, comments, text chunks, MPO
    frames) is removed losslessly by :func:`ml_code.data.scrub.scrub`; ``sha256`` (and so
    the content-addressed key) is that of the stored bytes. The stored file must decode, by
    the image policy, to exactly the original's pixels: when it does not, or when the file
    cannot be walked, the policy's decoded pixels are stored instead as a lossless PNG
    (``format`` PNG) with no metadata at all. Size and perceptual hash do not change.
    """
    facts = image_policy.probe(data, max_pixels=limits.max_pixels)
    try:
        stored, fmt = scrub.scrub(data, orientation=facts.orientation).data, facts.format
    except scrub.ScrubError:
        stored, fmt = b"", ""
    if stored != data:
        with image_policy.open_image(data, max_pixels=limits.max_pixels) as decoded:
            same = False
            if stored:
                try:
                    with image_policy.open_image(stored, max_pixels=limits.max_pixels) as again:
                        same = np.array_equal(np.asarray(decoded), np.asarray(again))
                except image_policy.ImageRefused:
                    pass
            if not same:  # untagged 8-bit RGB: the policy reads it back as exactly these pixels
                buf = io.BytesIO()
                decoded.save(buf, format="PNG")
                stored, fmt = buf.getvalue(), "PNG"
    return stored, info._replace(sha256=hashlib.sha256(stored).hexdigest(), format=fmt, extension=_EXTENSIONS[fmt])


METADATA_FILE_NAMES: tuple[str, ...] = ("HAM10000_metadata.csv", "metadata.csv", "HAM10000_metadata")
"""Where a dataset's metadata CSV may be, in order of preference (HAM10000, then an ISIC export)."""
IMAGE_SUBDIRS: tuple[str, ...] = ("", "images", "HAM10000_images_part_1", "HAM10000_images_part_2")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def find_image_file(images_dir: str | Path, image_id: str) -> Path | None:
    """Locate ``<image_id>.<ext>`` in ``images_dir`` or its usual sub-folders, or None.

    ``images_dir`` may be the dataset root or the images folder itself: HAM10000
    ships images either in ``images/`` or split across ``HAM10000_images_part_1``
    and ``_part_2``; ISIC exports put them next to ``metadata.csv``.
    """
    if not image_id or not re.match(IMAGE_ID_PATTERN, image_id):
        return None  # never build a path from an unsafe id
    root = Path(images_dir)
    for sub in IMAGE_SUBDIRS:
        folder = root / sub if sub else root
        for ext in IMAGE_EXTENSIONS:
            candidate = folder / f"{image_id}{ext}"
            if candidate.is_file():
                return candidate
    return None


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def canonical_manifest_csv(manifest_df: pd.DataFrame) -> bytes:
    """The manifest as canonical CSV bytes: fixed column order, sorted by image_id, '\\n' endings."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest_df.columns]
    if missing:
        raise ValueError(f"manifest is missing columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    df = manifest_df.loc[:, list(MANIFEST_COLUMNS)].sort_values("image_id", kind="mergesort")
    columns: list[list[str]] = []
    for c in MANIFEST_COLUMNS:
        if c == "age":
            ages = pd.to_numeric(df["age"], errors="coerce").astype(float).tolist()
            columns.append(["" if math.isnan(a) else f"{a:.1f}" for a in ages])
        elif c in ("width", "height"):
            columns.append([str(v) for v in pd.to_numeric(df[c]).astype(np.int64).tolist()])
        else:  # text as pandas writes it: missing values empty, anything else ``str``
            columns.append(df[c].fillna("").astype(str).tolist())
    # The bytes pandas' to_csv(index=False, lineterminator="\n", float_format="%.1f", na_rep="") gives
    # (tests/ml_code/test_ingest.py holds them equal), at a tenth of the time: see ml_code.data.csv_text.
    return csv_text(MANIFEST_COLUMNS, columns).encode()


def manifest_hash(manifest_df: pd.DataFrame) -> str:
    """sha256 of the canonical manifest CSV: the raw data version, independent of row order."""
    return manifest_csv_hash(canonical_manifest_csv(manifest_df))


def manifest_csv_hash(manifest_csv: bytes) -> str:
    """:func:`manifest_hash` of a manifest already written as :func:`canonical_manifest_csv` bytes
    (ingestion publishes those bytes and keys them by this hash without writing them twice)."""
    return hashlib.sha256(manifest_csv).hexdigest()


def info_columns(infos: Sequence[ImageInfo]) -> dict[str, tuple]:
    """``infos`` as columns: each :class:`ImageInfo` field -> its values, in order (empty tuples
    for no infos). One transposition in C, for the manifest and the ingestion memo."""
    return dict(zip(ImageInfo._fields, zip(*infos))) if len(infos) else dict.fromkeys(ImageInfo._fields, ())


def manifest_frame(metadata: pd.DataFrame, infos: Sequence[ImageInfo], other_class: str | None = None,
                   metadata_checked: bool = False) -> pd.DataFrame:
    """The manifest of accepted rows, typed and schema-validated: ``metadata`` rows in the internal
    schema (as :func:`normalise_metadata` returns them; other columns are dropped) beside their
    accepted images' ``infos``, same length and order. Built column by column: one dict per row
    cost a 10,000-row rerun a tenth of a second. ``other_class`` as for :func:`build_manifest`.
    ``metadata_checked``: the rows are taken unchanged from a frame ``normalise_metadata`` has
    just returned (validated, ids unique), so only the image columns are checked
    (:data:`IMAGE_SCHEMA`); otherwise every column is. Raises ValueError when the lengths differ."""
    if len(metadata) != len(infos):
        raise ValueError(f"{len(metadata)} metadata rows but {len(infos)} image infos; give one info per row")
    manifest = metadata.loc[:, list(METADATA_COLUMNS)].reset_index(drop=True)
    fields = info_columns(infos)
    manifest["image_key"] = list(map(image_key, fields["sha256"], fields["extension"]))
    for c in ("sha256", "format", "width", "height", "phash"):
        manifest[c] = list(fields[c])
    return _typed_manifest(manifest.loc[:, list(MANIFEST_COLUMNS)], other_class,
                           IMAGE_SCHEMA if metadata_checked else None)


def build_manifest(rows: list[dict[str, object]], other_class: str | None = None) -> pd.DataFrame:
    """Manifest rows (dicts of :data:`MANIFEST_COLUMNS`) as a typed, schema-validated DataFrame;
    ``other_class`` as given to ``normalise_metadata`` (rows may then carry it as ``dx``)."""
    return _typed_manifest(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), other_class)


def _typed_manifest(manifest: pd.DataFrame, other_class: str | None,
                    schema: pa.DataFrameSchema | None = None) -> pd.DataFrame:
    """``manifest`` with its column types, checked by ``schema`` (default: every column)."""
    manifest["age"] = manifest["age"].astype(float)
    for c in ("width", "height"):
        manifest[c] = manifest[c].astype(np.int64)
    for c in MANIFEST_COLUMNS:
        if c not in ("age", "width", "height"):
            manifest[c] = manifest[c].astype(str)
    if schema is None:
        schema = MANIFEST_SCHEMA
        if other_class is not None:
            schema = schema.update_column("dx", checks=[pa.Check.isin((*CLASSES, other_class))])
    return schema.validate(manifest)
