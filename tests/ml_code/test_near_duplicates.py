"""Near-duplicate images: the hash survives re-encoding, pair finding is exact and fast, and the
splitter and the leakage check treat a near-duplicate pair like two photos of one lesion."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ml_code.data import near_duplicates as nd
from ml_code.data.splits import check_no_leakage, group_ids, grouped_stratified_split, near_duplicate_leaks
from ml_code.package import image_policy


def _lesion(seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A dermoscopy-like picture: an irregular dark blob on textured skin, different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    angle = np.arctan2(yy - cy, xx - cx)
    radius = 0.2 * min(w, h) * (1 + 0.3 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, 6)))
    blob = 1 / (1 + np.exp((np.hypot(xx - cx, yy - cy) - radius) / 3))
    skin = np.array(rng.uniform([190, 140, 120], [235, 185, 165])) + rng.normal(0, 6, (h, w, 1))
    lesion = np.array(rng.uniform([60, 30, 20], [120, 80, 70]))
    arr = skin * (1 - blob[..., None]) + lesion * blob[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _bytes(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _hash(data: bytes) -> str:
    return nd.phash_hex(image_policy.open_image(data))


def test_hash_is_stable_under_copies_and_differs_between_pictures() -> None:
    original = _lesion(1)
    base = _hash(_bytes(original, quality=95))
    assert len(base) == nd.HASH_HEX == 64
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways with an orientation tag: the policy turns it upright first
    copies = {
        "jpeg q70": _bytes(original, quality=70),
        "png": _bytes(original, "PNG"),
        "half size": _bytes(original.resize((100, 75), Image.Resampling.LANCZOS), quality=90),
        "double size": _bytes(original.resize((400, 300), Image.Resampling.BICUBIC), quality=90),
        "rotated + orientation tag": _bytes(original.transpose(Image.Transpose.ROTATE_90), quality=95,
                                            exif=exif.tobytes()),
    }
    for what, data in copies.items():
        assert nd.hamming(base, _hash(data)) <= nd.PHASH_THRESHOLD, what
    others = [_hash(_bytes(_lesion(seed), quality=95)) for seed in range(2, 12)]
    assert min(nd.hamming(base, other) for other in others) > nd.PHASH_THRESHOLD


def _brute_force(hashes: list[str], threshold: int) -> set[tuple[int, int, int]]:
    out = set()
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            d = nd.hamming(hashes[i], hashes[j])
            if d <= threshold:
                out.add((i, j, d))
    return out


def _random_hashes(n: int, seed: int, planted: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**63, (n, 4), dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    hashes = ["".join(f"{int(w):016x}" for w in row) for row in words]
    for k in range(planted):  # copies of earlier hashes with a few bits flipped
        src, dst = int(rng.integers(0, n // 2)), int(rng.integers(n // 2, n))
        value = int(hashes[src], 16)
        for bit in rng.choice(256, int(rng.integers(0, 20)), replace=False):
            value ^= 1 << int(bit)
        hashes[dst] = f"{value:064x}"
    return hashes


def test_pairs_are_exactly_the_brute_force_pairs_across_chunks(monkeypatch) -> None:
    monkeypatch.setattr(nd, "_CHUNK", 37)  # many chunk boundaries
    hashes = _random_hashes(300, seed=3, planted=40)
    for threshold in (0, 8, 16, 19):
        got = {tuple(int(v) for v in row) for row in nd.near_duplicate_pairs(hashes, threshold)}
        assert got == _brute_force(hashes, threshold)
    assert nd.near_duplicate_pairs(hashes[:1]).shape == (0, 3)
    with pytest.raises(ValueError, match="not 64 hex digits"):
        nd.near_duplicate_pairs(["abc", hashes[0]])


def test_ten_thousand_images_take_seconds() -> None:
    hashes = _random_hashes(10_000, seed=4, planted=25)
    words = nd.to_words(hashes)
    start = time.perf_counter()
    pairs = nd.near_duplicate_pairs(words)
    assert time.perf_counter() - start < 20  # about 0.3 s on one free core
    assert len(pairs) >= 1


def test_groups_are_connected_components() -> None:
    a = "0" * 64
    b = f"{0b111:064x}"  # 3 bits from a
    c = f"{0b111111:064x}"  # 3 bits from b, 6 from a: joins through b
    far = "f" * 64
    groups = nd.near_duplicate_groups([far, a, "", b, c, None], threshold=3)
    assert groups.tolist() == [0, 1, 2, 1, 1, 5]


def _manifest() -> pd.DataFrame:
    """Twelve lesions of two classes; ISIC_dup is lesion L0's picture re-uploaded under lesion X."""
    rows, hashes = [], {}
    for k in range(12):
        hashes[f"ISIC_{k}"] = _hash(_bytes(_lesion(100 + k), quality=95))
        rows.append({"image_id": f"ISIC_{k}", "lesion_id": f"L{k}", "dx": "nv" if k % 2 else "mel"})
    rows.append({"image_id": "ISIC_dup", "lesion_id": "X", "dx": "mel"})
    hashes["ISIC_dup"] = _hash(_bytes(_lesion(100), quality=70))
    df = pd.DataFrame(rows)
    return df.assign(phash=df["image_id"].map(hashes))


def test_splitter_keeps_a_near_duplicate_pair_in_one_split() -> None:
    df = _manifest()
    groups = group_ids(df)
    assert groups[df["image_id"] == "ISIC_dup"].item() == groups[df["image_id"] == "ISIC_0"].item()
    assert groups.nunique() == 12
    assert group_ids(df, near_duplicate_threshold=None).nunique() == 13
    for seed in range(10):
        split = grouped_stratified_split(df, 0.3, 0.3, seed=seed)
        assert split[df["image_id"] == "ISIC_dup"].item() == split[df["image_id"] == "ISIC_0"].item()
        assert check_no_leakage(df.assign(split=split)) == []


def test_leakage_check_reports_near_duplicates_across_splits() -> None:
    df = _manifest().assign(split="train")
    df.loc[df["image_id"] == "ISIC_dup", "split"] = "test"
    problems = check_no_leakage(df)
    assert len(problems) == 1 and "ISIC_0 and ISIC_dup" in problems[0] and "['test', 'train']" in problems[0]
    assert near_duplicate_leaks(df.drop(columns="phash")) == []  # manifests from before hashing: nothing to check


def _every_pair(words: np.ndarray, threshold: int) -> np.ndarray:
    """The pairs within ``threshold`` from the full distance matrix: the reference for both searches."""
    dist = np.bitwise_count(words[:, None, :] ^ words[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(dist <= threshold, k=1))
    return np.stack([i, j, dist[i, j]], axis=1).astype(np.int64)


def _lookalike_words(n: int, seed: int = 0, varying: int = 64, p: float = 0.4) -> np.ndarray:
    """Hashes of look-alike pictures: one hash with each of ``varying`` fixed bits flipped with
    probability ``p`` per picture, so most bits agree everywhere and few pairs are within 16."""
    rng = np.random.default_rng(seed)
    bits = np.tile(rng.integers(0, 2, nd.HASH_BITS).astype(np.uint8), (n, 1))
    where = rng.choice(nd.HASH_BITS, varying, replace=False)
    bits[:, where] ^= (rng.random((n, varying)) < p).astype(np.uint8)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def test_the_band_index_finds_exactly_the_exhaustive_pairs(monkeypatch) -> None:
    """The pigeonhole index (kept on, however many candidates) and the exhaustive comparison,
    each against the full distance matrix: clustered hashes (a few bits flipped from common
    ancestors, like dermoscopy pictures that share a layout), a run of identical hashes, every
    threshold the index serves and those that fall back (bands under MIN_BAND_BITS)."""
    monkeypatch.setattr(nd, "_index_prunes", lambda candidates, n: True)
    monkeypatch.setattr(nd, "_PAIRS_PER_CHUNK", 5_000)  # chunks of 7 rows: many chunk boundaries
    rng = np.random.default_rng(11)
    ancestors = nd.to_words(_random_hashes(12, seed=5))
    words = ancestors[rng.integers(0, 12, 700)].copy()
    for row in words:  # flip 0-40 random bits of each copy
        for bit in rng.choice(256, int(rng.integers(0, 41)), replace=False):
            row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    words[600:640] = words[600]  # 40 identical hashes: one long run in every band
    for threshold in (0, 1, 3, 4, 9, 16, 20, 24, 25, 40):
        expected = _every_pair(words, threshold)
        np.testing.assert_array_equal(nd.near_duplicate_pairs(words, threshold), expected, err_msg=f"{threshold}")
        np.testing.assert_array_equal(nd._all_pairs(words, threshold), expected, err_msg=f"{threshold}")
    assert len(nd.near_duplicate_pairs(words, 16)) > 40 * 39 // 2  # the run and the clusters are found
    assert nd.to_words(["AB" * 32]).tolist() == nd.to_words(["ab" * 32]).tolist()
    assert nd.to_words([" " + "ab" * 32 + "\n", "cd" * 32]).tolist() == nd.to_words(["ab" * 32, "cd" * 32]).tolist()
    with pytest.raises(ValueError, match=r"position 0\) is not 64 hex digits"):
        nd.to_words(["ab" * 31, "cd" * 33])  # together 64 + 64 digits, each of the wrong length
    for bad in ("ab" * 31 + "  ", "ab" * 31 + "zz", "ab" * 33):
        with pytest.raises(ValueError, match="not 64 hex digits"):
            nd.to_words([bad])
    # 64 characters each, with a space that fromhex skips: decoded together they make 63 whole
    # bytes, one short, and the first value is named
    with pytest.raises(ValueError, match=r"position 0\) is not 64 hex digits"):
        nd.to_words(["ab" * 30 + " aba", "b" + "ab" * 30 + " ab", "cd" * 32])


def test_look_alike_pictures_are_searched_exhaustively_in_bounded_memory(monkeypatch) -> None:
    """Look-alike hashes agree on most bits, so runs of equal band values span much of the set and
    the band index would hold nearly every pair as a candidate (200 MiB for these 2,000; 2.2 GB for
    10,000 synthetic pictures, ``benchmarks/near_duplicates_lookalike.py``). The search hands over
    to the exhaustive comparison instead: the same pairs, memory bounded."""
    import tracemalloc

    words = _lookalike_words(2_000)
    searched = []
    exhaustive = nd._all_pairs
    monkeypatch.setattr(nd, "_all_pairs", lambda h, t: searched.append(len(h)) or exhaustive(h, t))
    tracemalloc.start()
    try:
        pairs = nd.near_duplicate_pairs(words)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(pairs, _every_pair(words, nd.PHASH_THRESHOLD))
    assert len(pairs) > 0
    assert searched == [2_000]
    assert peak < 64 * 2**20, f"the search held {peak / 2**20:.0f} MiB"
    assert nd.candidate_pairs(words) > 2_000 * 1_999 // 16  # what the hand-over was decided on
    # the ordinary case stays on the index: HAM10000-like scattered hashes with planted copies
    searched.clear()
    scattered = _random_hashes(2_000, seed=8, planted=30)
    nd.near_duplicate_pairs(scattered)
    assert searched == []
    assert nd.candidate_pairs(scattered) < 2_000 * 1_999 // 16


def test_a_repeated_search_inside_pairs_reused_is_answered_from_memory(monkeypatch) -> None:
    """Inside ``pairs_reused`` each distinct (hashes, threshold) is searched once; every answer is
    the search's, a caller changing its copy changes no later answer, and nothing outlives the block."""
    searches: list[int] = []
    real = nd._pairs
    monkeypatch.setattr(nd, "_pairs", lambda h, t: searches.append(t) or real(h, t))
    hashes = _random_hashes(300, seed=5, planted=30)
    expected = real(nd.to_words(hashes), nd.PHASH_THRESHOLD)
    assert len(expected)
    with nd.pairs_reused():
        first = nd.near_duplicate_pairs(hashes)
        first[:] = -1
        again = nd.near_duplicate_pairs(list(hashes))
        words = nd.near_duplicate_pairs(nd.to_words(hashes))  # the same hashes given as words
        tighter = nd.near_duplicate_pairs(hashes, threshold=4)
        others = nd.near_duplicate_pairs(hashes[:-1])
    np.testing.assert_array_equal(again, expected)
    np.testing.assert_array_equal(words, expected)
    assert searches == [nd.PHASH_THRESHOLD, 4, nd.PHASH_THRESHOLD]
    assert len(tighter) <= len(expected) and len(others) <= len(expected)
    nd.near_duplicate_pairs(hashes)
    assert len(searches) == 4  # outside the block every call searches


def test_the_processing_job_searches_its_hashes_once(monkeypatch, tmp_path) -> None:
    """The split's grouping and its leakage check share one near-duplicate search."""
    from dermaops_resources.object_store import LocalObjectStore
    from dermaops_services.ingestion import ingest_dataset
    from ml_code.data import preprocess
    from ml_code.tools.demo_data import generate_demo_dataset

    source = generate_demo_dataset(tmp_path / "source", n_lesions_per_class=4, images_per_lesion=(1, 2),
                                   image_size=(48, 40), seed=2)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(source), store, salt="s" * 32)
    searches: list[int] = []
    real = nd._pairs
    monkeypatch.setattr(nd, "_pairs", lambda h, t: searches.append(len(h)) or real(h, t))
    preprocess.run(store.local_path(handle.manifest_uri).parent, store.local_path(handle.images_prefix_uri),
                   tmp_path / "out", image_size=16, num_workers=1)
    assert searches == [handle.num_images]


def _random_hash_sets(seed: int, trials: int):
    """Small manifests of a few base pictures, each row the base or a copy one bit away (or unhashed):
    many rows share one hash, the case the distinct-hash search exists for."""
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        k, n = int(rng.integers(1, 10)), int(rng.integers(1, 40))
        base = [int(x) for x in rng.integers(0, 2**62, size=k)]
        hashes = []
        for _ in range(n):
            h = base[int(rng.integers(k))] ^ ((1 << int(rng.integers(256))) if rng.random() < 0.4 else 0)
            hashes.append(f"{h:064x}" if rng.random() > 0.1 else "")
        yield pd.DataFrame({"image_id": [f"I{i:03d}" for i in range(n)], "phash": hashes,
                            "lesion_id": rng.choice(["L1", "L2", "L3"], size=n),
                            "split": rng.choice(["train", "val", "test"], size=n)}), int(rng.integers(0, 4))


def test_groups_pairs_and_leaks_match_every_pair_when_pictures_share_hashes() -> None:
    """Searched over distinct hashes, the groups, the pairs table (rows and exact counts, also when
    cut short) and the leak count are what comparing every pair of rows gives."""
    for df, threshold in _random_hash_sets(seed=1, trials=150):
        rows = df[df["phash"] != ""].reset_index(drop=True)
        every = _every_pair(nd.to_words(rows["phash"].tolist()), threshold) if len(rows) > 1 else np.zeros((0, 3), int)
        ids, lesions, split = (rows[c].to_numpy() for c in ("image_id", "lesion_id", "split"))
        expected = pd.DataFrame({"image_id_a": ids[every[:, 0]], "image_id_b": ids[every[:, 1]], "distance": every[:, 2],
                                 "lesion_id_a": lesions[every[:, 0]], "lesion_id_b": lesions[every[:, 1]]})
        expected = expected.sort_values(["distance", "image_id_a", "image_id_b"], kind="mergesort").reset_index(drop=True)
        table = nd.pairs_table(df, threshold)
        pd.testing.assert_frame_equal(table.astype(str), expected.astype(str), check_dtype=False)
        cross = int((expected["lesion_id_a"] != expected["lesion_id_b"]).sum())
        assert (table.attrs["pairs"], table.attrs["cross_lesion_pairs"]) == (len(expected), cross)
        short = nd.pairs_table(df, threshold, max_rows=3)
        assert len(short) == min(3, len(expected)) and short.attrs["truncated"] == (len(expected) > 3)
        assert (short.attrs["pairs"], short.attrs["cross_lesion_pairs"]) == (len(expected), cross)
        # cut short: the closest cross-lesion pairs first, then the closest same-lesion ones
        assert set(map(tuple, short.astype(str).to_numpy())) <= set(map(tuple, expected.astype(str).to_numpy()))
        for differ, room in ((True, 3), (False, 3 - min(3, cross))):
            listed = short[(short["lesion_id_a"] != short["lesion_id_b"]) == differ]["distance"].tolist()
            wanted = expected[(expected["lesion_id_a"] != expected["lesion_id_b"]) == differ]["distance"].tolist()
            assert listed == wanted[:room]
        components = connected_components(coo_matrix((np.ones(len(every)), (every[:, 0], every[:, 1])),
                                                     shape=(len(rows),) * 2), directed=False)[1]
        groups = nd.near_duplicate_groups(rows["phash"], threshold)
        assert all((groups[i] == groups[j]) == (components[i] == components[j])
                   for i in range(len(rows)) for j in range(len(rows)))
        leaks = near_duplicate_leaks(df, threshold=threshold)
        crossing = int(sum(split[i] != split[j] for i, j, _ in every))
        counted = sum(int(m.rsplit("(", 1)[1].split(" pairs")[0]) if "cross splits" in m else 1 for m in leaks)
        assert counted == crossing


def test_a_cut_table_lists_the_cross_lesion_pairs_of_a_flood_first() -> None:
    """A flood of one hash whose pictures are all of one lesion but a few: the pairs to act on
    (different lesion ids, same picture) are listed, not crowded out by same-lesion pairs."""
    n = 30_000
    lesion = np.where(np.arange(n) >= n - 2, "L1", "L0")  # the last two pictures are another lesion's
    flood = pd.DataFrame({"image_id": [f"F{i:06d}" for i in range(n)], "phash": ["ab" * 32] * n, "lesion_id": lesion})
    table = nd.pairs_table(flood, max_rows=1000)
    assert len(table) == 1000 and (table["lesion_id_a"] != table["lesion_id_b"]).all()
    assert table.attrs["cross_lesion_pairs"] == 2 * (n - 2) and table.attrs["truncated"]
    # fewer cross-lesion pairs than rows: every one of them, then same-lesion pairs in the room left
    small = flood.iloc[-3000:].reset_index(drop=True)
    table = nd.pairs_table(small, max_rows=10_000)
    differ = table["lesion_id_a"] != table["lesion_id_b"]
    assert len(table) == 10_000 and int(differ.sum()) == 2 * 2998 == table.attrs["cross_lesion_pairs"]
    assert not table[differ].duplicated().any() and set(table[differ]["lesion_id_b"]) | set(table[differ]["lesion_id_a"]) == {"L0", "L1"}
    # two close hashes, each shared: the cross-lesion pairs between them come first too
    pair = pd.DataFrame({"image_id": [f"P{i:05d}" for i in range(4000)],
                         "phash": ["ab" * 32] * 2000 + ["ab" * 31 + "aa"] * 2000,
                         "lesion_id": ["L0"] * 3999 + ["L9"]})
    table = nd.pairs_table(pair, max_rows=500)
    assert (table["lesion_id_a"] != table["lesion_id_b"]).all() and len(table) == 500


def test_a_flood_of_one_hash_costs_rows_not_pairs() -> None:
    """30,000 pictures with one hash are 450 million pairs: counted, not listed, in a fraction of a
    second and well under a gigabyte (listing them took minutes and tens of GB)."""
    n = 30_000
    flood = pd.DataFrame({"image_id": [f"F{i:06d}" for i in range(n)], "phash": ["ab" * 32] * n,
                          "lesion_id": [f"L{i // 2}" for i in range(n)], "dx": "nv",
                          "split": np.where(np.arange(n) % 3 == 0, "test", "train")})
    table = nd.pairs_table(flood, max_rows=1000)
    assert table.attrs == {"pairs": n * (n - 1) // 2, "cross_lesion_pairs": n * (n - 1) // 2 - n // 2,
                           "truncated": True}
    assert len(table) == 1000 and set(table["distance"]) == {0}
    assert group_ids(flood).nunique() == 1
    tests = n // 3
    leaks = near_duplicate_leaks(flood)
    assert leaks == [f"near-duplicate images F000000 and F000001 (phash distance 0) are in splits ['test', 'train'] "
                     f"({tests * (n - tests)} pairs of pictures with these hashes cross splits)"]
