"""Near-duplicate images: a perceptual hash per image, the pairs within a small Hamming distance,
and the groups they join so that a picture and its re-encoded, resized or re-exported copy never
sit in different splits.

Why: the splitter groups by ``lesion_id`` (and ``patient_ref``), but the same picture can arrive
twice under two lesion ids: a clinic batch re-uploading an archive image, a JPEG and its PNG
export, a crop. Exact byte duplicates are already dropped at ingestion (sha256); these are not
byte-identical, so only a perceptual hash finds them. A duplicate pair across train and test lets
the model score by recognising the picture, and the test metric overstates real performance.

The hash is ``imagehash.phash`` with ``hash_size=16``: 256 bits, the signs of the 16 x 16 lowest
DCT frequencies of the 64 x 64 greyscale image, computed on the image decoded by the image
policy (:mod:`ml_code.package.image_policy`: first frame, orientation applied, sRGB), so a
rotated or colour-managed copy hashes like the original. Stored as 64 lower-case hex digits.

Why 256 bits and not the usual 64: dermoscopy pictures all share one layout (a dark blob in
the middle of smooth skin), and the 8 x 8 hash cannot tell them apart. Measured on HAM10000
(``benchmarks/near_duplicates_ham10000.py`` and 3,000 sampled images): at 64 bits, visibly
different lesions of different diagnoses collide at distance 0-2 (40 cross-lesion pairs at
T <= 2, 322 at T <= 4, 17,492 at T <= 10), so any useful threshold merges unrelated lesions. At
256 bits, re-encoding (JPEG q70), halving, upscaling and +10 % brightness stay within 12 bits for
99 % of images (18 at most), while among 4.5 million pairs of different sampled pictures only 4
are within 16 bits, and those are photos of one lesion.

Threshold ``PHASH_THRESHOLD`` = 16 of 256 bits. On all 10,015 HAM10000 images it finds 42 pairs:
41 are photos of one lesion (already grouped by ``lesion_id``) and 1 is the same picture, colour
shifted, under two lesion ids (ISIC_0030074 / ISIC_0025226): exactly the leak this module is for.
Crops change the hash a lot (a 3 % border crop moves it up to 78 bits): a cropped copy is not
caught, and a lower-level method (feature matching) would be needed for that.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_SIZE = 16
"""``imagehash.phash`` hash_size: the hash is the HASH_SIZE x HASH_SIZE lowest DCT frequencies."""
HASH_BITS = HASH_SIZE * HASH_SIZE  # 256
HASH_HEX = HASH_BITS // 4  # 64 hex digits
_WORDS = HASH_BITS // 64  # uint64 words per hash

PHASH_THRESHOLD: int = 16
"""Largest Hamming distance (of 256 bits) at which two images count as near-duplicates."""

_CHUNK = 256
"""Most rows of the exhaustive search's pairwise XOR computed at once (:func:`_all_pairs`)."""
_PAIRS_PER_CHUNK = 1 << 21
"""Pairs the exhaustive search compares at once (fewer rows per chunk as N grows): its memory is
about 2 million x 3 int64 whatever N, not 256 rows x N (2 GB of survivors at N = 100,000)."""
MAX_CANDIDATES = 4_000_000
"""Most candidate pairs (32 MB of pair codes) the band index collects before handing over to the
exhaustive search (:func:`_pairs`)."""


def phash_hex(img: Image.Image) -> str:
    """256-bit perceptual hash of a decoded image as 64 lower-case hex digits.

    ``img`` is the image policy's decoded RGB image (any size); the hash is computed on
    its greyscale 32 x 32 resize, so the input size does not matter."""
    import imagehash  # imported here: ingestion needs it, the served model package does not

    value = imagehash.phash(img, hash_size=HASH_SIZE)
    return f"{int(str(value), 16):0{HASH_HEX}x}"


def to_words(hashes: Iterable[str]) -> np.ndarray:
    """Hex hashes -> ``uint64`` array of shape ``(N, HASH_BITS // 64)``; ValueError names the
    first value that is not ``HASH_HEX`` hex digits (surrounding spaces and upper case allowed).

    All values are decoded in one ``bytes.fromhex`` call when each is ``HASH_HEX`` characters
    long (the call fails, or comes up short where it skipped a space, unless every character is a
    hex digit); otherwise the values are stripped, lower-cased and decoded again, and the first
    that still fails is named. One call, not one per hash: this runs over every manifest row in
    each split and leakage check."""
    values = hashes if isinstance(hashes, list) else list(hashes)
    raw = _fromhex_whole(values)
    if raw is None:
        values = [str(h).strip().lower() for h in values]
        raw = _fromhex_whole(values)
    if raw is None:  # name the first value that does not decode on its own
        i, text = next((i, text) for i, text in enumerate(values) if _fromhex_whole([text]) is None)
        raise ValueError(f"phash {text!r} (position {i}) is not {HASH_HEX} hex digits; recompute it with phash_hex")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(values), _WORDS)


def _fromhex_whole(values: list) -> bytes | None:
    """The bytes of ``values`` (each ``HASH_HEX`` hex digits, nothing else) decoded together, or
    None when any is not: of another length, not text, or holding a non-hex character."""
    if not all(isinstance(v, str) and len(v) == HASH_HEX for v in values):
        return None
    try:
        raw = bytes.fromhex("".join(values))
    except ValueError:
        return None
    return raw if len(raw) == len(values) * (HASH_BITS // 8) else None


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


MIN_BAND_BITS = 10
"""Narrowest band the index uses; at larger thresholds (bands of fewer bits match too often to
prune) :func:`near_duplicate_pairs` compares every pair instead."""


def near_duplicate_pairs(hashes: Sequence[str] | np.ndarray, threshold: int = PHASH_THRESHOLD) -> np.ndarray:
    """All index pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``threshold``.

    ``hashes`` are hex strings or the ``(N, words)`` array of :func:`to_words`; returns an int64
    array of shape ``(k, 3)`` sorted by ``(i, j)``. Exact, and not quadratic: a multi-index on
    bands (the pigeonhole principle of Manku, Jain and Das Sarma, "Detecting near-duplicates for
    web crawling", WWW 2007). The 256 bits are split into ``B = threshold + 1`` disjoint bands (at
    least 5, so a band's value fits an int64), so two hashes within ``threshold`` bits agree exactly
    on at least one band; only pairs that share a band value are popcounted. Bands interleave the
    bits (band ``b`` holds bits ``b``, ``b + B``, ``b + 2B``, ...), so each mixes low and high DCT frequencies and no band is
    nearly constant across dermoscopy pictures. At thresholds whose bands would be narrower than
    ``MIN_BAND_BITS`` it falls back to :func:`_all_pairs` (the exhaustive, quadratic comparison).
    """
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold must be in 0..{HASH_BITS - 1} bits, got {threshold}")
    h = hashes if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64 else to_words(hashes)
    answered = _ANSWERED.get()
    if answered is None:
        return _pairs(h, threshold)
    key = (threshold, hashlib.sha256(np.ascontiguousarray(h).tobytes()).digest())
    if key not in answered:
        answered[key] = _pairs(h, threshold)
    return answered[key].copy()


_ANSWERED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("near_duplicate_pairs_answered", default=None)


@contextlib.contextmanager
def pairs_reused() -> Iterator[None]:
    """Within the block, :func:`near_duplicate_pairs` works out each distinct set of hashes (and
    threshold) once and answers a repeat from memory. Why: the processing job groups its rows by
    near-duplicates (:func:`ml_code.data.splits.group_ids`) and then checks the split for
    near-duplicate leaks over the same hashes, and each full search costs about as much as the
    rest of a rerun's split assignment. Scoped, so no answer outlives the block."""
    token = _ANSWERED.set({})
    try:
        yield
    finally:
        _ANSWERED.reset(token)


def _pairs(h: np.ndarray, threshold: int) -> np.ndarray:
    """:func:`near_duplicate_pairs` of the ``(N, words)`` hashes ``h``, always worked out.

    The bands prune only when band values vary. On look-alike pictures (one background, a device's
    test shots, ``benchmarks/ingest_scale.py``'s synthetic set) most bits agree everywhere, runs of
    equal band values span much of the set, and the candidate pairs approach all pairs: on that
    set's 10,000 hashes, 24.0 million candidates (48% of all pairs) for 34 true pairs; the band
    index alone held 1.9-2.2 GB at peak (and took 2.7 s; 25-31 s before its keys were packed), the
    exhaustive search 1.6-2.0 s and 0.19 GB (0.15 GB of it the imports;
    ``benchmarks/near_duplicates_lookalike.py``). So each band's runs
    are counted before its candidate pairs are made, and once the candidates pass
    :data:`MAX_CANDIDATES` or an eighth of all pairs (:func:`_index_prunes`) the exhaustive search
    answers instead: the same pairs, memory bounded (the candidates held never pass
    :data:`MAX_CANDIDATES`), time quadratic."""
    n = len(h)
    bands = _band_count(threshold)
    if HASH_BITS // bands < MIN_BAND_BITS or n < 2:
        return _all_pairs(h, threshold)
    bits = _bits(h)
    codes: list[np.ndarray] = []  # at most MAX_CANDIDATES in all: each band is counted before its codes are made
    candidates = 0
    for band in range(bands):
        order, sorted_key, lengths = _band_runs(bits, band, bands)
        candidates += int((lengths * (lengths - 1) // 2).sum())
        if not _index_prunes(candidates, n):
            del codes
            return _all_pairs(h, threshold)
        # pair each row with the next rows of its run of equal keys: offsets 1, 2, ... up to the longest run
        for offset in range(1, int(lengths.max())):
            same = sorted_key[offset:] == sorted_key[:-offset]
            a, b = order[:-offset][same], order[offset:][same]
            codes.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not codes:
        return np.empty((0, 3), dtype=np.int64)
    pair_codes = np.sort(np.concatenate(codes))  # by (i, j); a pair found in several bands is kept once
    pair_codes = pair_codes[np.r_[True, pair_codes[1:] != pair_codes[:-1]]]
    rows, cols = pair_codes // n, pair_codes % n
    dist = np.bitwise_count(h[rows] ^ h[cols]).sum(axis=1, dtype=np.int64)
    close = dist <= threshold
    return np.stack([rows[close], cols[close], dist[close]], axis=1).astype(np.int64)


def candidate_pairs(hashes: Sequence[str] | np.ndarray, threshold: int = PHASH_THRESHOLD) -> int:
    """How many candidate pairs the band index would check for ``hashes`` (pairs sharing a band
    value, counted once per band), against ``N * (N - 1) / 2`` for the exhaustive search: what
    :func:`_index_prunes` decides on. For benchmarks; ValueError at thresholds without bands."""
    h = hashes if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64 else to_words(hashes)
    bands = _band_count(threshold)
    if HASH_BITS // bands < MIN_BAND_BITS:
        raise ValueError(f"threshold {threshold} has bands under {MIN_BAND_BITS} bits: the search is exhaustive")
    bits = _bits(h)
    return sum(int((lengths * (lengths - 1) // 2).sum()) for _, _, lengths in
               (_band_runs(bits, band, bands) for band in range(bands)))


def _band_count(threshold: int) -> int:
    """Bands of the index: ``threshold + 1`` at least (two hashes within ``threshold`` bits then agree
    on a whole band); more are still exact and keep each band within 52 bits at threshold < 4."""
    return max(threshold + 1, HASH_BITS // 52 + 1)


def _bits(h: np.ndarray) -> np.ndarray:
    """``(N, 256)`` uint8 0/1 of the ``(N, words)`` hashes, most significant bit first."""
    return np.unpackbits(h.astype(">u8").view(np.uint8), axis=1)


def _band_runs(bits: np.ndarray, band: int, bands: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band ``band`` of ``bands`` (bits ``band``, ``band + bands``, ...; interleaved so each mixes
    low and high frequencies): the row order sorting its keys, the sorted keys, and the lengths of
    the runs of equal keys in that order."""
    key = _band_key(bits[:, band::bands])
    order = np.argsort(key, kind="stable")  # a radix sort for the usual 1- and 2-byte keys
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    return order, sorted_key, np.diff(np.r_[starts, len(key)])


def _band_key(band_bits: np.ndarray) -> np.ndarray:
    """One integer per row that is equal exactly when the rows' ``band_bits`` ((n, k) of 0/1, k <= 52)
    are: the bits packed into bytes, in the smallest unsigned type that holds them (16 bits at
    most for the bands of the usual threshold, where argsort is a radix sort)."""
    packed = np.packbits(band_bits, axis=1)  # (n, ceil(k / 8)) uint8
    width = {1: 1, 2: 2, 3: 4, 4: 4}.get(packed.shape[1], 8)
    if packed.shape[1] < width:
        packed = np.concatenate([packed, np.zeros((len(packed), width - packed.shape[1]), np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view(f"<u{width}").ravel()


def _index_prunes(candidates: int, n: int) -> bool:
    """Whether the band index, with ``candidates`` pairs to check among ``n`` hashes, is worth it
    (bounded memory and fewer comparisons) rather than the exhaustive search: at most
    :data:`MAX_CANDIDATES` and an eighth of all pairs (:func:`candidate_pairs` counts them;
    ``benchmarks/near_duplicates_ham10000.py`` prints HAM10000's)."""
    return candidates <= min(MAX_CANDIDATES, n * (n - 1) // 16)


def _all_pairs(h: np.ndarray, threshold: int) -> np.ndarray:
    """:func:`near_duplicate_pairs` by comparing every pair: the upper triangle of the pairwise
    distances in chunks of rows (at most :data:`_CHUNK`, and :data:`_PAIRS_PER_CHUNK` pairs), word
    by word, each word dropping the pairs already past ``threshold`` (a word's distance is a lower
    bound of the total). Quadratic: a second for 10,000 hashes on one core, about a minute at
    100,000 (more when the hashes look alike and few pairs are dropped early); memory bounded by
    the chunk and the pairs found. The reference the index is tested against."""
    n = len(h)
    step = max(1, min(_CHUNK, _PAIRS_PER_CHUNK // max(n, 1)))
    found: list[np.ndarray] = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        # rows start..stop against every later column (j > i); column k is image start + k
        first = np.bitwise_count(h[start:stop, None, 0] ^ h[None, start:, 0])
        rows, cols = np.nonzero(first <= threshold)
        keep = cols > rows
        dist = first[rows[keep], cols[keep]].astype(np.int64)
        rows, cols = rows[keep] + start, cols[keep] + start
        del first
        for word in range(1, h.shape[1]):
            dist += np.bitwise_count(h[rows, word] ^ h[cols, word])
            close = dist <= threshold
            rows, cols, dist = rows[close], cols[close], dist[close]
        if len(rows):
            found.append(np.stack([rows, cols, dist], axis=1))
    if not found:
        return np.empty((0, 3), dtype=np.int64)
    return np.concatenate(found).astype(np.int64)


def distinct_hashes(hashes: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct hashes ``(U, words)``, ``inverse`` ``(N,)``: row -> its distinct hash) of hex hashes or
    :func:`to_words` rows. Why: pictures with one hash (a batch of blank frames, a device's test
    shots re-exported) are all pairwise near-duplicates, so their pairs grow with the square of
    their number (3,000 such pictures: 4.5 million pairs); searched once per distinct hash, and
    joined to it by ``inverse``, they cost one row each."""
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64:
        if len(hashes) == 0:
            return hashes.reshape(0, _WORDS), np.zeros(0, dtype=np.int64)
        distinct, inverse = np.unique(hashes, axis=0, return_inverse=True)
        return distinct, inverse.reshape(-1).astype(np.int64)
    # the hex text, factorized (a hash table: several times faster than sorting the words), then
    # decoded once per distinct text; two spellings of one hash stay two entries, at distance 0
    inverse, texts = pd.factorize(pd.Series(list(hashes), dtype=object))
    return to_words(list(texts)), inverse.astype(np.int64)


def hash_members(inverse: np.ndarray, n_distinct: int) -> tuple[np.ndarray, np.ndarray]:
    """(members, bounds) of :func:`distinct_hashes`' ``inverse``: the rows of distinct hash ``u`` are
    ``members[bounds[u]:bounds[u + 1]]``, in row order."""
    members = np.argsort(inverse, kind="stable")
    return members, np.searchsorted(inverse[members], np.arange(n_distinct + 1))


def differing_pairs(left_codes: np.ndarray, right_codes: np.ndarray | None = None) -> int:
    """How many pairs of pictures, one on the left and one on the right (two on the left when
    ``right_codes`` is None), have different codes (their lesion, their split): every pair less
    those sharing a code, counted per code, so a cluster's pairs are never listed."""
    if right_codes is None:
        same = np.unique(left_codes, return_counts=True)[1]
        return (len(left_codes) * (len(left_codes) - 1) - int((same * (same - 1)).sum())) // 2
    same = pd.Series(left_codes).value_counts() * pd.Series(right_codes).value_counts()  # NaN: a code on one side only
    return len(left_codes) * len(right_codes) - int(same.dropna().sum())


def near_duplicate_groups(hashes: Sequence[str] | pd.Series, threshold: int = PHASH_THRESHOLD) -> np.ndarray:
    """Connected components of the near-duplicate graph: one int64 group number per input,
    equal for images joined by a chain of near-duplicate pairs (the smallest member index
    names the group, so the numbering does not depend on anything but input order).

    Searched over the distinct hashes (:func:`distinct_hashes`): linear in the rows however many
    pictures share a hash. Empty or missing hashes (manifests written before hashing existed)
    form singleton groups."""
    values = pd.Series(hashes.tolist() if isinstance(hashes, pd.Series) else list(hashes), dtype=object)
    values = values.fillna("").astype(str).str.strip()
    n = len(values)
    present = np.flatnonzero(values.ne("").to_numpy())
    if len(present) < 2:
        return np.arange(n, dtype=np.int64)
    distinct, inverse = distinct_hashes(values.iloc[present].tolist())
    pairs = near_duplicate_pairs(distinct, threshold)
    # nodes: the n rows, then one per distinct hash; each hashed row joins its hash, close hashes join
    src = np.concatenate([present, n + pairs[:, 0]])
    dst = np.concatenate([n + inverse, n + pairs[:, 1]])
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n + len(distinct),) * 2)
    _, component = connected_components(graph, directed=False)
    component = component[:n]
    smallest = np.full(component.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n, dtype=np.int64))
    return smallest[component]


PAIR_COLUMNS: tuple[str, ...] = ("image_id_a", "image_id_b", "distance", "lesion_id_a", "lesion_id_b")


PAIR_ROWS = 100_000
"""Most rows :func:`pairs_table` lists (about 40 MB of ids); its counts are exact beyond them."""


def pairs_table(manifest: pd.DataFrame, threshold: int = PHASH_THRESHOLD, max_rows: int = PAIR_ROWS) -> pd.DataFrame:
    """Near-duplicate pairs of a manifest (columns ``image_id``, ``phash``, optional ``lesion_id``)
    as a table with ``PAIR_COLUMNS``, closest first; rows without a hash are skipped.

    ``attrs``: ``pairs`` and ``cross_lesion_pairs`` (pairs whose lesion ids differ), exact, and
    ``truncated``. Searched over the distinct hashes (:func:`distinct_hashes`) and counted per pair
    of them, so pictures sharing one hash cost one row each: beyond ``max_rows`` pairs (a flood of
    look-alike pictures, whose pairs grow with the square of their number) the table lists at most
    ``max_rows`` rows and says it is ``truncated``: the cross-lesion pairs first (the ones to act
    on: a lesion id to merge, or a leak), closest first, then the closest same-lesion pairs in the
    room left. Rows are shown closest first."""
    empty = pd.DataFrame(columns=list(PAIR_COLUMNS))
    empty.attrs.update(pairs=0, cross_lesion_pairs=0, truncated=False)
    if "phash" not in manifest.columns or manifest.empty:
        return empty
    rows = manifest[manifest["phash"].fillna("").astype(str).str.strip().ne("")].reset_index(drop=True)
    if len(rows) < 2:
        return empty
    distinct, inverse = distinct_hashes(rows["phash"].astype(str).tolist())
    lesions = (rows["lesion_id"].astype(str) if "lesion_id" in rows.columns else pd.Series([""] * len(rows))).to_numpy()
    lesion_codes = pd.factorize(lesions)[0]
    members, bounds = hash_members(inverse, len(distinct))
    sizes = np.diff(bounds)
    close = near_duplicate_pairs(distinct, threshold)

    def rows_of(a: np.ndarray, b: np.ndarray, distance) -> np.ndarray:
        return np.stack([np.minimum(a, b), np.maximum(a, b), np.broadcast_to(distance, a.shape)], axis=1)

    # pairs of two pictures with hashes of their own (the usual case): one row each, vectorised
    single = (sizes[close[:, 0]] == 1) & (sizes[close[:, 1]] == 1)
    a, b = members[bounds[close[single, 0]]], members[bounds[close[single, 1]]]
    differ = lesion_codes[a] != lesion_codes[b]
    found = {True: [rows_of(a[differ], b[differ], close[single, 2][differ])],
             False: [rows_of(a[~differ], b[~differ], close[single, 2][~differ])]}
    total = len(a)
    cross = int(differ.sum())
    # a hash several pictures share, and close hashes either of which several share: counted first,
    # then listed (closest first) up to max_rows cross-lesion pairs and, when there are fewer of
    # those, same-lesion pairs for the room left, however many pairs they make
    shared = np.flatnonzero(sizes > 1)
    items = np.concatenate([np.stack([shared, shared, np.zeros_like(shared)], axis=1), close[~single]]).astype(np.int64)
    items = items[np.argsort(items[:, 2], kind="stable")]
    sides = [(members[bounds[u]:bounds[u + 1]], None if u == v else members[bounds[v]:bounds[v + 1]]) for u, v, _ in items]
    for left, right in sides:
        total += len(left) * (len(left) - 1) // 2 if right is None else len(left) * len(right)
        cross += differing_pairs(lesion_codes[left], None if right is None else lesion_codes[right])
    room = {True: max_rows, False: max(0, max_rows - cross)}
    for (left, right), distance in zip(sides, items[:, 2]):
        if room[True] <= 0 and room[False] <= 0:
            break
        for differ_, (a, b) in _first_pairs_by_lesion(left, right, lesion_codes, room[True], room[False]).items():
            found[differ_].append(rows_of(a, b, distance))
            room[differ_] -= len(a)
    # cross-lesion pairs first, closest first; the closest same-lesion pairs in the room left
    cut = []
    for differ_ in (True, False):
        candidates = np.concatenate(found[differ_]).astype(np.int64)
        cut.append(candidates[np.argsort(candidates[:, 2], kind="stable")[:max_rows - sum(map(len, cut))]])
    pairs = np.concatenate(cut)
    ids = rows["image_id"].astype(str).to_numpy()
    table = pd.DataFrame({
        "image_id_a": ids[pairs[:, 0]],
        "image_id_b": ids[pairs[:, 1]],
        "distance": pairs[:, 2].astype(np.int64),
        "lesion_id_a": lesions[pairs[:, 0]],
        "lesion_id_b": lesions[pairs[:, 1]],
    }, columns=list(PAIR_COLUMNS))
    table = table.sort_values(["distance", "image_id_a", "image_id_b"], kind="mergesort").reset_index(drop=True)
    table.attrs.update(pairs=total, cross_lesion_pairs=cross, truncated=total > len(table))
    return table


def _first_pairs_by_lesion(left: np.ndarray, right: np.ndarray | None, lesion_codes: np.ndarray, cross_limit: int,
                           same_limit: int) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """Up to ``cross_limit`` pairs of ``left`` x ``right`` (of ``left`` with itself when ``right`` is
    None) whose lesions differ, under key True, and up to ``same_limit`` whose lesions agree, under
    False. The pictures are taken a lesion at a time, so the work is the pairs listed plus a pass
    over the pictures per lesion that contributes, never the pairs passed over: a cluster of
    30,000 pictures of one lesion and one of another gives its 29,999 cross-lesion pairs first."""
    def by_lesion(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = rows[np.argsort(lesion_codes[rows], kind="stable")]
        codes, starts = np.unique(lesion_codes[rows], return_index=True)
        return rows, codes, np.append(starts, len(rows))

    out: dict[bool, list] = {True: [], False: []}
    room = {True: cross_limit, False: same_limit}
    left_rows, left_codes, left_bounds = by_lesion(left)

    def take(differ: bool, a_rows: np.ndarray, b_rows: np.ndarray | None) -> None:
        if room[differ] > 0 and len(a_rows) and (b_rows is None or len(b_rows)):
            a, b = _first_pairs(a_rows, b_rows, room[differ])
            if len(a):
                out[differ].append((a, b))
                room[differ] -= len(a)

    right_codes = None if right is None else lesion_codes[right]
    for k, code in enumerate(left_codes):
        if room[True] <= 0 and room[False] <= 0:
            break
        cell = left_rows[left_bounds[k]:left_bounds[k + 1]]
        if right is None:
            if len(cell) > 1:
                take(False, cell, None)  # the lesion's pictures with each other
            take(True, cell, left_rows[left_bounds[k + 1]:])  # with every picture of a later lesion
        else:
            same_lesion = right_codes == code
            take(False, cell, right[same_lesion])
            take(True, cell, right[~same_lesion])
    empty = np.zeros(0, np.int64)
    return {d: (np.concatenate([a for a, _ in found]), np.concatenate([b for _, b in found])) if found else (empty, empty)
            for d, found in out.items()}


def _first_pairs(left: np.ndarray, right: np.ndarray | None, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` pairs, row by row, of ``left`` x ``right``, or of ``left`` with itself
    (``right`` None: each pair once, ``left[i]`` with the later ``left[j]``): only those are made,
    so listing a few pairs of a huge cluster costs no more than the few."""
    if right is not None:
        rows = min(len(left), -(-limit // max(len(right), 1)))
        a, b = np.repeat(left[:rows], len(right)), np.tile(right, rows)
        return a[:limit], b[:limit]
    m = len(left)
    per_row = np.arange(m - 1, -1, -1)  # row r pairs with the m - 1 - r after it
    rows = int(np.searchsorted(np.cumsum(per_row), limit)) + 1
    i = np.repeat(np.arange(min(rows, m)), per_row[:rows])
    j = np.concatenate([np.arange(r + 1, m) for r in range(min(rows, m))]) if len(i) else np.zeros(0, np.int64)
    return left[i[:limit]], left[j[:limit]]
