"""Diagnosis vocabularies -> the seven HAM10000 classes, through one explicit table.

Every place that reads a diagnosis uses this module: ingestion (HAM10000 ``dx`` codes, the
ISIC Archive's legacy ``diagnosis`` column and its current ``diagnosis_1..5`` hierarchy),
``dermaops score`` (ISIC challenge ground truth and metadata CSVs) and the ground-truth
labels that monitoring joins to captured predictions (codes, challenge codes, full names, any
case).

Why a table and no inference: the previous mapping walked an ISIC hierarchy from its most
specific level upward and took the first level it knew, so a leaf it did not list silently
took its parent's class: a *follicular adnexal carcinoma* became ``bcc`` through its parent
"Malignant adnexal epithelial proliferations - Follicular", a *lentigo simplex* and a
*Mongolian spot* became ``nv`` through "Benign melanocytic proliferations" (case C09). A
wrong label is worse than a missing one, so here a diagnosis maps only when the table says so.

Hierarchy rules (``HIERARCHY_RULES``): each names one node of the ISIC diagnosis hierarchy by
its full path and says whether the class covers the node only or the node *and every node
below it* (``subtree=True``). Subtree rules are used only where every descendant is, by the
hierarchy's own definition, a kind of that diagnosis (every "Melanoma Invasive, ..." is an
invasive melanoma, every "Nevus, ..." a nevus); category nodes such as "Benign melanocytic
proliferations" are never subtree rules. A path with no rule for itself and no subtree rule
above it is *unmapped*: quarantined with its full path as the reason, or given the
configured ``other`` class.

Vocabulary source: the ISIC Archive's published vocabulary, PyPI ``isic-metadata`` 4.12.0
(``isic_metadata.diagnosis_hierarchical.DiagnosisEnum``, Apache-2.0, Kitware). The table is
written out here rather than read from that package at run time (the runtime needs no extra
dependency, and a vocabulary update cannot change a label without a code change);
``tests/ml_code/test_diagnosis.py`` checks every path in the table against the package when it
is installed, and checks which of its 418 terms map to which class.

Class decisions, so that a mapped label means what HAM10000's label means:

* ``mel``: invasive, in-situ and unspecified melanoma (HAM10000 "mel" includes in situ).
  *Melanoma metastasis* is not a primary skin lesion and is not mapped.
* ``nv``: the "Nevus" subtree (Spitz, Reed, blue, congenital, dysplastic ... nevi).
  *Lentigo simplex*, *dermal melanocytosis* (Mongolian spot, nevus of Ota/Ito),
  lentiginous melanocytic proliferation and every "Indeterminate melanocytic
  proliferation" (atypical melanocytic neoplasm, AIMP, atypical Spitz tumour) are not nevi
  in HAM10000's sense and are not mapped.
* ``bcc``: the "Basal cell carcinoma" subtree only. Baso-squamous, proliferating
  trichilemmal, matrical and other follicular carcinomas are not mapped.
* ``akiec``: HAM10000's "actinic keratoses and intraepithelial carcinoma (Bowen's disease)":
  the "Solar or actinic keratosis" subtree and the "Squamous cell carcinoma in situ" subtree.
  Invasive or unspecified SCC and bowenoid papulosis are not mapped.
* ``bkl``: seborrheic keratosis (subtree), solar lentigo, lichen-planus-like keratosis and
  pigmented benign keratosis, as in HAM10000. Lentigo NOS, ink-spot lentigo and ephelis
  are not mapped.
* ``df``: the "Dermatofibroma" subtree.
* ``vasc``: HAM10000's angiomas, angiokeratomas and pyogenic granulomas: the "Hemangioma"
  subtree, angiokeratoma, pyogenic granuloma and the other benign vascular proliferations
  listed below; malignant vascular tumours (Kaposi, angiosarcoma) and vascular
  malformations are not mapped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ml_code import CLASSES

PATH_SEPARATOR = " > "
"""How a hierarchy path is shown in reasons (the archive's own separator is ':')."""


@dataclass(frozen=True)
class Rule:
    """One table entry: ``path`` (general -> specific) maps to ``dx``; ``subtree`` extends it to every
    node below ``path``."""

    path: tuple[str, ...]
    dx: str
    subtree: bool = False


_MEL = ("Malignant", "Malignant melanocytic proliferations (Melanoma)")
_NV = ("Benign", "Benign melanocytic proliferations")
_BCC = ("Malignant", "Malignant adnexal epithelial proliferations - Follicular")
_AK = ("Indeterminate", "Indeterminate epidermal proliferations")
_SCC = ("Malignant", "Malignant epidermal proliferations")
_BKL = ("Benign", "Benign epidermal proliferations")
_DF = ("Benign", "Benign soft tissue proliferations - Fibro-histiocytic")
_VASC = ("Benign", "Benign soft tissue proliferations - Vascular")

HIERARCHY_RULES: tuple[Rule, ...] = (
    # mel
    Rule((*_MEL, "Melanoma Invasive"), "mel", subtree=True),
    Rule((*_MEL, "Melanoma in situ"), "mel", subtree=True),
    Rule((*_MEL, "Melanoma, NOS"), "mel", subtree=True),
    # nv
    Rule((*_NV, "Nevus"), "nv", subtree=True),
    # bcc
    Rule((*_BCC, "Basal cell carcinoma"), "bcc", subtree=True),
    # akiec
    Rule((*_AK, "Solar or actinic keratosis"), "akiec", subtree=True),
    Rule((*_SCC, "Squamous cell carcinoma in situ"), "akiec", subtree=True),
    # bkl
    Rule((*_BKL, "Seborrheic keratosis"), "bkl", subtree=True),
    Rule((*_BKL, "Solar lentigo"), "bkl"),
    Rule((*_BKL, "Lichen planus like keratosis"), "bkl"),
    Rule((*_BKL, "Pigmented benign keratosis"), "bkl"),
    # df
    Rule((*_DF, "Dermatofibroma"), "df", subtree=True),
    # vasc
    Rule((*_VASC, "Hemangioma"), "vasc", subtree=True),
    Rule((*_VASC, "Angiokeratoma"), "vasc"),
    Rule((*_VASC, "Pyogenic granuloma"), "vasc"),
    Rule((*_VASC, "Acquired elastotic hemangioma"), "vasc"),
    Rule((*_VASC, "Glomeruloid hemangioma"), "vasc"),
    Rule((*_VASC, "Verrucous hemangioma"), "vasc"),
    Rule((*_VASC, "Venous lake"), "vasc"),
)
"""The ISIC hierarchy table (see the module docstring for the decisions)."""

FLAT_TERMS: dict[str, str] = {
    # HAM10000 codes; ISIC challenge column names are the same letters in upper case
    **{c: c for c in CLASSES},
    # HAM10000's own class names (Tschandl et al. 2018) and common variants
    "melanoma": "mel",
    "melanocytic nevi": "nv",
    "melanocytic nevus": "nv",
    "basal cell carcinoma": "bcc",
    "actinic keratoses": "akiec",
    "actinic keratoses and intraepithelial carcinoma": "akiec",
    "actinic keratoses and intraepithelial carcinoma (bowen's disease)": "akiec",
    "benign keratosis-like lesions": "bkl",
    "benign keratosis": "bkl",
    "dermatofibroma": "df",
    "vascular lesions": "vasc",
    "vascular lesion": "vasc",
    # the ISIC Archive's legacy single 'diagnosis' column
    "nevus": "nv",
    "actinic keratosis": "akiec",
    "squamous cell carcinoma in situ": "akiec",
    "bowen's disease": "akiec",
    "bowens disease": "akiec",
    "seborrheic keratosis": "bkl",
    "solar lentigo": "bkl",
    "lichenoid keratosis": "bkl",
    "lichen planus like keratosis": "bkl",
    "pigmented benign keratosis": "bkl",
    "angioma": "vasc",
    "hemangioma": "vasc",
    "cherry angioma": "vasc",
    "angiokeratoma": "vasc",
    "pyogenic granuloma": "vasc",
}
"""Single terms (lower-case, whitespace collapsed): HAM10000 codes and names, the ISIC legacy
``diagnosis`` vocabulary. Hierarchy leaf names are matched through ``HIERARCHY_RULES``."""

def _norm(value: object) -> str:
    """Lower-case, strip and collapse whitespace; missing -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    if text.lower() in ("nan", "<na>", "none"):
        return ""
    return re.sub(r"\s+", " ", text).strip().lower()


_RULES: dict[tuple[str, ...], Rule] = {tuple(_norm(p) for p in r.path): r for r in HIERARCHY_RULES}
_LEAF_RULES: dict[str, list[Rule]] = {}
for _rule in HIERARCHY_RULES:
    _LEAF_RULES.setdefault(_norm(_rule.path[-1]), []).append(_rule)


@dataclass(frozen=True)
class DiagnosisMapping:
    """The outcome for one diagnosis: ``dx`` (a class, the ``other`` class, or None) and, when it
    is not one of the seven classes, ``reason`` naming the full path and how to fix it."""

    dx: str | None
    path: str
    reason: str = ""


def unmapped_reason(path: str) -> str:
    return (f"diagnosis not in the mapping table: {path}; add it to ml_code/data/diagnosis.py "
            "or configure an 'other' class")


def map_hierarchy(levels: Sequence[object]) -> str | None:
    """Class of an ISIC hierarchy path (``diagnosis_1`` .. ``diagnosis_5``, general -> specific;
    empty levels ignored), or None when the table does not cover its most specific node."""
    path = tuple(t for t in (_norm(v) for v in levels) if t)
    if not path:
        return None
    rule = _RULES.get(path)
    if rule is not None:
        return rule.dx
    for depth in range(len(path) - 1, 0, -1):  # an ancestor counts only through a subtree rule
        rule = _RULES.get(path[:depth])
        if rule is not None and rule.subtree:
            return rule.dx
    return None


def map_term(term: object) -> str | None:
    """Class of a single term: a HAM10000 code or name, an ISIC challenge code, a legacy ISIC
    ``diagnosis`` value, or the leaf name of a table node (e.g. ``"Nevus, Spitz"`` needs its
    path; ``"Melanoma in situ"`` alone is a table node), any case; None when unknown."""
    text = _norm(term)
    if not text:
        return None
    if text in FLAT_TERMS:
        return FLAT_TERMS[text]
    if ":" in text or ">" in text:  # a whole path in one string, the archive's ':' or our ' > '
        return map_hierarchy(re.split(r"\s*[:>]\s*", text))
    classes = {r.dx for r in _LEAF_RULES.get(text, [])}
    return classes.pop() if len(classes) == 1 else None


def map_diagnosis(levels: Sequence[object] = (), legacy: object = None, *,
                  other_class: str | None = None) -> DiagnosisMapping:
    """Map one metadata row's diagnosis.

    ``levels`` is the ISIC ``diagnosis_1..5`` hierarchy (general -> specific) or empty;
    ``legacy`` a single term (HAM10000 ``dx``, ISIC legacy ``diagnosis``). A non-empty hierarchy
    wins over the legacy term (it is the archive's current, more specific field). Unmapped ->
    ``dx=None`` with a reason naming the full path, or ``dx=other_class`` when one is
    configured (its reason still says why). Never falls back to a parent's class."""
    shown = [str(v).strip() for v in levels if _norm(v)]
    if shown:
        path = PATH_SEPARATOR.join(shown)
        dx = map_hierarchy(shown)
    else:
        path = str(legacy).strip() if _norm(legacy) else "<empty>"
        dx = map_term(legacy)
    if dx is not None:
        return DiagnosisMapping(dx, path)
    return DiagnosisMapping(other_class or None, path, unmapped_reason(path))


def normalise_label(text: object) -> str | None:
    """A ground-truth label in any accepted spelling -> its HAM10000 class code, or None.

    Accepts HAM10000 codes (``mel``), ISIC challenge codes (``MEL``), full names
    (``Melanoma``, ``melanocytic nevi``), hierarchy paths and table leaf names, any case.
    None means unknown: callers report it with its count and never score it as a wrong answer."""
    return map_term(text)


def normalise_labels(labels: Iterable[object]) -> tuple[list[str | None], dict[str, int]]:
    """``(class or None per label, {unknown label as given: count})``: the shared way to read a
    column of ground-truth labels."""
    out: list[str | None] = []
    unknown: dict[str, int] = {}
    for label in labels:
        dx = normalise_label(label)
        out.append(dx)
        if dx is None:
            key = "<empty>" if not _norm(label) else str(label).strip()
            unknown[key] = unknown.get(key, 0) + 1
    return out, dict(sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0])))
