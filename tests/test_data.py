from collections import Counter

import numpy as np
import pytest

from featpipe.data import (
    Manifest,
    detect_source,
    from_class_folders,
    from_csv,
    from_label_lists,
    from_npz,
    from_split_folders,
    load_dataset,
    stratified_split,
)
from featpipe.data.splitting import assign_splits
from featpipe.errors import DatasetError

from _imgutil import make_class_folders, write_image


def _by_split(m: Manifest) -> Counter:
    return Counter(m.splits)


# ----------------------------------------------------------------------------- splitting


def test_split_deterministic_and_seed_dependent():
    y = np.random.default_rng(0).integers(0, 4, 300)
    a = stratified_split(y, "multiclass", seed=1)
    b = stratified_split(y, "multiclass", seed=1)
    c = stratified_split(y, "multiclass", seed=2)
    assert a.dtype.kind == "U" and set(a) == {"train", "val", "test"}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_proportions_per_class():
    # Splits come from a per-image hash, so counts follow the fractions up to binomial noise
    # (no longer exactly per class); every class with >= 3 images is in every split.
    y = np.repeat(np.arange(5), [1000, 400, 230, 11, 7])
    s = stratified_split(y, "multiclass", (0.7, 0.15, 0.15), seed=0)
    n = len(y)
    for name, f in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs((s == name).sum() - f * n) <= 3 * np.sqrt(n * f * (1 - f)), name
        for c in range(5):
            sc = s[y == c]
            assert (sc == name).sum() >= 1, (c, name)
            if len(sc) >= 200:
                assert abs((sc == name).sum() - f * len(sc)) <= 4 * np.sqrt(len(sc) * f * (1 - f)), (c, name)


def test_split_fraction_validation():
    y = np.zeros(10, dtype=int)
    with pytest.raises(DatasetError, match="sum to 1"):
        stratified_split(y, "binary", (0.7, 0.2, 0.2))
    with pytest.raises(DatasetError, match="three"):
        stratified_split(y, "binary", (0.5, 0.5))
    s = stratified_split(np.array([0, 1] * 10), "binary", (0.8, 0.2, 0.0))
    assert "test" not in s


def test_multilabel_iterative_stratification_keeps_rare_labels_everywhere():
    rng = np.random.default_rng(0)
    n = 600
    y = (rng.random((n, 6)) < [0.5, 0.3, 0.1, 0.05, 0.0, 0.0]).astype(np.uint8)
    y[rng.choice(n, 3, replace=False), 4] = 1  # exactly 3 positives
    y[rng.choice(n, 5, replace=False), 5] = 1
    s = stratified_split(y, "multilabel", seed=3)
    assert np.array_equal(s, stratified_split(y, "multilabel", seed=3))
    assert not np.array_equal(s, stratified_split(y, "multilabel", seed=4))
    for name, f in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        part = y[s == name]
        assert abs(len(part) - f * n) <= 3 * np.sqrt(n * f * (1 - f))
        assert (part.sum(axis=0) >= 1).all(), name  # every label, even the 3-positive one, in each split
        for j in range(4):  # per-label proportions follow the fractions up to binomial noise
            npos = y[:, j].sum()
            assert abs(part[:, j].sum() - f * npos) <= max(2, 4 * np.sqrt(npos * f * (1 - f)))


def _grow(counts, extra, rng):
    """ids per class, and the same dataset with ~``extra`` more images spread over the classes."""
    old = {c: [f"{c}/{i:04d}" for i in range(n)] for c, n in counts.items()}
    total = sum(counts.values())
    new = {c: list(v) for c, v in old.items()}
    for c in rng.choice(list(counts), size=int(round(extra * total)), p=np.array(list(counts.values())) / total):
        new[c].append(f"{c}/new{len(new[c]):04d}")
    return old, new


def _flat(d):
    ids = [i for v in d.values() for i in v]
    cls = {c: k for k, c in enumerate(d)}
    return ids, np.array([cls[i.split("/")[0]] for i in ids])


@pytest.mark.parametrize("seed", range(8))
def test_split_stable_when_images_are_added(seed):
    counts = {"a": 400, "b": 120, "c": 40, "d": 19, "e": 9, "f": 5, "g": 3, "h": 2, "i": 1}
    old, new = _grow(counts, 0.10, np.random.default_rng(seed))
    ids0, y0 = _flat(old)
    ids1, y1 = _flat(new)
    a = assign_splits(ids0, y0, "multiclass", seed=seed)
    b = assign_splits(ids1, y1, "multiclass", seed=seed)
    before = dict(zip(ids0, a.splits, strict=True))
    after = dict(zip(ids1, b.splits, strict=True))
    moved = [i for i in ids0 if before[i] != after[i]]
    assert all(len(old[i.split("/")[0]]) < 20 for i in moved), moved
    assert len(moved) <= a.repairs + b.repairs
    for c, v in new.items():  # stratification still holds after the growth
        got = Counter(after[i] for i in v)
        need = ("train", "val", "test") if len(v) >= 3 else ("train",)
        assert all(got[s] >= 1 for s in need), (c, got)


def test_split_of_an_image_does_not_depend_on_the_others():
    ids = [f"img{i}" for i in range(2000)]
    y = np.arange(2000) % 2
    full = assign_splits(ids, y, "binary", seed=7)
    half = assign_splits(ids[::2] + ids[1::2][:500], np.r_[y[::2], y[1::2][:500]], "binary", seed=7)
    assert full.repairs == half.repairs == 0
    assert dict(zip(ids[::2], half.splits[:1000], strict=True)) == dict(
        zip(ids[::2], full.splits[::2], strict=True)
    )


def test_split_multilabel_stable_when_images_are_added():
    rng = np.random.default_rng(1)
    n = 1000
    y = (rng.random((n + 100, 5)) < [0.4, 0.2, 0.05, 0.012, 0.006]).astype(np.uint8)
    ids = [f"im{i}" for i in range(n + 100)]
    a = assign_splits(ids[:n], y[:n], "multilabel", seed=0)
    b = assign_splits(ids, y, "multilabel", seed=0)
    moved = np.flatnonzero(a.splits != b.splits[:n])
    rare = y[:, y.sum(axis=0) < 20]
    assert all(rare[m].any() for m in moved)  # only images carrying a rare label move
    assert len(moved) <= a.repairs + b.repairs
    for s in ("train", "val", "test"):
        assert (y[b.splits == s].sum(axis=0) >= 1).all()


def test_split_repairs_fill_empty_splits_with_fewest_moves():
    ids = [f"x{i}" for i in range(5)]
    y = np.zeros(5, dtype=int)
    for seed in range(20):
        res = assign_splits(ids, y, "multiclass", seed=seed)  # one class of 5: every split needs one
        got = Counter(res.splits)
        assert min(got[s] for s in ("train", "val", "test")) >= 1
        hashed = stratified_split(y, "multiclass", (1.0, 0.0, 0.0), seed=seed)  # no repair possible
        assert set(hashed) == {"train"}
        empty = sum(1 for s in ("val", "test") if got[s] == 1)
        assert res.repairs <= empty + 1  # at most one move per split that was empty


def test_split_rejects_bad_shapes():
    with pytest.raises(DatasetError):
        stratified_split(np.zeros((4, 2)), "binary")
    with pytest.raises(DatasetError):
        stratified_split(np.zeros(4), "multilabel")


# ----------------------------------------------------------------------------- class folders


def test_class_folders(tmp_path):
    root = make_class_folders(tmp_path / "pets", {"dog": 10, "cat": 12, "bird": 7})
    write_image(root / "cat" / "UPPER.JPG")
    (root / "cat" / "notes.txt").write_text("x")
    (root / "dog" / ".hidden.png").write_bytes(b"junk")
    (root / "README.md").write_text("hi")
    m = from_class_folders(root, seed=0)
    assert m.name == "pets" and m.task == "multiclass"
    assert m.classes == ["bird", "cat", "dog"]
    assert len(m) == 30
    assert "cat/UPPER" in m.ids and "cat/0003" in m.ids
    assert not any(".hidden" in p for p in m.paths)
    reasons = dict((k.rsplit("/", 1)[-1], v) for k, v in m.skipped)
    assert "notes.txt" in reasons and "README.md" in reasons
    assert m.labeled.all() and m.labels.dtype == np.int64
    assert m.labels[m.ids.index("bird/0001")] == 0
    assert set(m.splits) == {"train", "val", "test"}
    assert m.split_seed == 0 and m.split_fractions == (0.7, 0.15, 0.15)
    m2 = from_class_folders(root, seed=0)
    assert m2.splits == m.splits and m2.fingerprint() == m.fingerprint()
    assert from_class_folders(root, seed=5).splits != m.splits


def test_class_folders_binary_and_id_collision(tmp_path):
    root = make_class_folders(tmp_path / "d", {"no": 4, "yes": 4})
    write_image(root / "yes" / "0000.jpg")  # same stem as yes/0000.png
    m = from_class_folders(root)
    assert m.task == "binary" and m.classes == ["no", "yes"]
    assert "yes/0000.png" in m.ids and "yes/0000.jpg" in m.ids


def test_class_folders_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        from_class_folders(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        from_class_folders(tmp_path / "empty")
    make_class_folders(tmp_path / "one", {"only": 3})
    with pytest.raises(DatasetError, match="at least 2 classes"):
        from_class_folders(tmp_path / "one")


# ----------------------------------------------------------------------------- split folders


def test_split_folders_carves_val_and_keeps_pred(tmp_path):
    root = tmp_path / "ds"
    make_class_folders(root / "train", {"a": 20, "b": 20})
    make_class_folders(root / "Test", {"a": 3, "b": 3, "c": 2})  # class c only in test: allowed
    for i in range(3):
        write_image(root / "pred" / f"p{i}.jpg", seed=i)
    m = from_split_folders(root, val_fraction=0.2, seed=1)
    assert m.classes == ["a", "b", "c"] and m.task == "multiclass"
    c = _by_split(m)
    assert c["test"] == 8 and c["pred"] == 3
    # ~20% of the train images carved out by the per-image hash (binomial, not exactly 8), each class
    # in both train and val
    assert c["val"] + c["train"] == 40 and 3 <= c["val"] <= 14
    assert all({"train", "val"} <= {s for s, y in zip(m.splits, m.labels, strict=True) if y == k} for k in (0, 1))
    assert m.split_fractions == (0.8, 0.2, 0.0) and m.split_seed == 1
    pred = [i for i, s in enumerate(m.splits) if s == "pred"]
    assert not m.labeled[pred].any() and (m.labels[pred] == -1).all()
    assert "pred/p0" in m.ids and "Test/c/0000" in m.ids and "train/a/0000" in m.ids


def test_split_folders_names_normalised(tmp_path):
    root = tmp_path / "ds"
    make_class_folders(root / "training", {"x": 3, "y": 3})
    make_class_folders(root / "valid", {"x": 2, "y": 2})
    make_class_folders(root / "testing", {"x": 2, "y": 2})
    m = from_split_folders(root)
    assert _by_split(m) == {"train": 6, "val": 4, "test": 4}
    assert m.task == "binary" and m.split_fractions is None and m.split_seed is None


def test_split_folders_unlabeled_test(tmp_path):
    root = tmp_path / "ds"
    make_class_folders(root / "train", {"x": 10, "y": 10})
    write_image(root / "test" / "a.png")
    m = from_split_folders(root)
    assert _by_split(m)["test_unlabeled"] == 1
    assert {"train", "val", "test"} <= set(m.splits)


def test_split_folders_without_train(tmp_path):
    make_class_folders(tmp_path / "ds" / "test", {"x": 2, "y": 2})
    with pytest.raises(DatasetError, match="train"):
        from_split_folders(tmp_path / "ds")


# ----------------------------------------------------------------------------- CSV


def _csv(path, text):
    path.write_text(text.strip() + "\n")
    return path


def test_csv_single_label_auto_columns(tmp_path):
    for i in range(12):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    rows = "\n".join(f"img/{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12))
    p = _csv(tmp_path / "data.csv", "filepath,Label\n" + rows + "\nimg/missing.png,cat")
    m = from_csv(p)
    assert m.name == "data" and m.task == "binary" and m.classes == ["cat", "dog"]
    assert len(m) == 12 and m.ids[0] == "img/0"
    assert m.skipped == [("img/missing.png", "file not found")]
    assert set(m.splits) == {"train", "val", "test"} and m.split_seed == 0


def test_csv_root_split_column_and_pred_rows(tmp_path):
    imgs = tmp_path / "images"
    for i in range(13):
        write_image(imgs / f"{i}.png", seed=i)
    lines = ["id,file,class,split"]
    lines += [f"r{i},{i}.png,{['a', 'b', 'c'][i % 3]},{'train' if i < 9 else 'test'}" for i in range(11)]
    lines += ["r11,11.png,,pred", "r12,12.png,,pred"]
    (tmp_path / "meta").mkdir()
    p = _csv(tmp_path / "meta" / "t.csv", "\n".join(lines))
    m = from_csv(p, root=imgs, id_col="id")
    assert m.ids[:2] == ["r0", "r1"]
    assert m.task == "multiclass" and _by_split(m)["pred"] == 2 and _by_split(m)["test"] == 2
    assert "val" in m.splits  # carved out of train
    assert m.labeled.sum() == 11 and (m.labels[~m.labeled] == -1).all()


def test_csv_multilabel_separator_and_01_columns(tmp_path):
    for i in range(9):
        write_image(tmp_path / f"{i}.png", seed=i)
    tags = ["sea|sky", "sky", "sea", "tree|sea", "tree", "sky|tree", "sea", "sky", "tree"]
    p = _csv(tmp_path / "a.csv", "path,labels\n" + "\n".join(f"{i}.png,{t}" for i, t in enumerate(tags)))
    m = from_csv(p)  # '|' auto-detected
    assert m.task == "multilabel" and m.classes == ["sea", "sky", "tree"]
    assert m.labels.dtype == np.uint8 and m.labels[0].tolist() == [1, 1, 0]
    p2 = _csv(
        tmp_path / "b.csv",
        "path,labels\n" + "\n".join(f"{i}.png,{t.replace('|', ' ')}" for i, t in enumerate(tags)),
    )
    assert np.array_equal(from_csv(p2, label_sep=" ").labels, m.labels)
    rows = "\n".join(f"{i}.png,{int('sea' in t)},{int('sky' in t)}" for i, t in enumerate(tags))
    p3 = _csv(tmp_path / "c.csv", "image,sea,sky\n" + rows)
    m3 = from_csv(p3)  # 0/1 columns auto-detected
    assert m3.task == "multilabel" and m3.classes == ["sea", "sky"]
    assert np.array_equal(m3.labels, m.labels[:, :2])
    assert np.array_equal(from_csv(p3, label_cols=["sky"]).labels[:, 0], m.labels[:, 1])


def _imgs(folder, n):
    for i in range(n):
        write_image(folder / f"{i}.png", seed=i)


def test_csv_semicolon_labels_with_empty_cells_are_multilabel(tmp_path):
    _imgs(tmp_path, 8)
    tags = ["smile;glasses", "", "smile", "hat;smile;glasses", "", "hat", "glasses", "hat; smile"]
    p = _csv(tmp_path / "faces.csv", "image,attributes\n" + "\n".join(f"{i}.png,{t}" for i, t in enumerate(tags)))
    m = from_csv(p, label_col="attributes")  # ';' detected; empty cells are images with no attribute
    assert m.task == "multilabel" and m.classes == ["glasses", "hat", "smile"]
    assert m.labeled.all() and len(m) == 8
    assert m.labels[1].tolist() == [0, 0, 0] and m.labels[7].tolist() == [0, 1, 1]
    assert set(m.splits) <= {"train", "val", "test"}


def test_csv_only_other_column_is_the_label_column(tmp_path):
    _imgs(tmp_path, 4)
    p = _csv(tmp_path / "f.csv", "image,Smiling and more\n0.png,yes\n1.png,no\n2.png,yes\n3.png,no")
    m = from_csv(p)
    assert m.classes == ["no", "yes"] and m.task == "binary"


def test_csv_dialect_is_sniffed_and_quoted_comma_labels(tmp_path):
    _imgs(tmp_path, 6)
    tags = ["a,b", "b", "a", "c,a", "c", "b,c"]
    # ';'-delimited file whose label cells use ','
    p = _csv(tmp_path / "semi.csv", "file;tags\n" + "\n".join(f"{i}.png;{t}" for i, t in enumerate(tags)))
    m = from_csv(p)
    assert m.task == "multilabel" and m.classes == ["a", "b", "c"] and m.labels[3].tolist() == [1, 0, 1]
    # ','-delimited file with quoted ','-separated cells
    p2 = _csv(tmp_path / "comma.csv", "file,tags\n" + "\n".join(f'{i}.png,"{t}"' for i, t in enumerate(tags)))
    assert np.array_equal(from_csv(p2).labels, m.labels)
    # tab-delimited file with a .csv name
    p3 = _csv(tmp_path / "tab.csv", "file\ttags\n" + "\n".join(f"{i}.png\t{t}" for i, t in enumerate(tags)))
    assert np.array_equal(from_csv(p3).labels, m.labels)


def test_csv_ambiguous_or_space_separated_labels_stop_naming_label_sep(tmp_path):
    _imgs(tmp_path, 4)
    p = _csv(tmp_path / "mix.csv", "path,labels\n0.png,a;b\n1.png,b|c\n2.png,a\n3.png,c")
    with pytest.raises(DatasetError, match=r"separator is ambiguous.*--label-sep"):
        from_csv(p)
    m = from_csv(p, label_sep=";")
    assert m.classes == ["a", "b", "b|c", "c"] and m.labels[0].tolist() == [1, 1, 0, 0]
    assert from_csv(p, label_sep="|").classes == ["a", "a;b", "b", "c"]
    spaces = _csv(tmp_path / "sp.csv", "path,tags\n0.png,cat dog\n1.png,cat\n2.png,dog\n3.png,dog")
    with pytest.raises(DatasetError, match=r"separated by spaces.*--label-sep ' '"):
        from_csv(spaces)
    ms = from_csv(spaces, label_sep="space")
    assert ms.task == "multilabel" and ms.labels[0].tolist() == [1, 1]
    assert from_csv(spaces, label_sep="none").classes == ["cat", "cat dog", "dog"]
    # class names with spaces that are not made of other labels stay single-label
    names = _csv(tmp_path / "n.csv", "path,label\n0.png,tabby cat\n1.png,dog\n2.png,tabby cat\n3.png,dog")
    assert from_csv(names).classes == ["dog", "tabby cat"]


def test_csv_single_label_empty_cell_error_or_unlabeled(tmp_path):
    _imgs(tmp_path, 7)
    body = "path,label\n" + "\n".join(f"{i}.png,{'xy'[i % 2]}" for i in range(6)) + "\n6.png,"
    p = _csv(tmp_path / "s.csv", body)
    with pytest.raises(DatasetError, match="line 8: empty label in column 'label'; pass --unlabeled-empty"):
        from_csv(p)
    m = from_csv(p, unlabeled_empty=True)
    assert m.task == "binary" and len(m) == 7
    k = m.ids.index("6")
    assert not m.labeled[k] and m.labels[k] == -1 and m.splits[k] == "unlabeled"
    assert m.labeled.sum() == 6


def test_csv_named_columns_and_line_numbers_with_multiline_cells(tmp_path):
    _imgs(tmp_path, 6)
    rows = [f'{i}.png,"note\nline two",{"ab"[i % 2]},{"train" if i < 4 else "test"}' for i in range(6)]
    p = _csv(tmp_path / "c.csv", "Photo,Comment,Kind,Part\n" + "\n".join(rows))
    with pytest.raises(DatasetError, match="--path-col"):
        from_csv(p)
    m = from_csv(p, path_col="Photo", label_col="Kind", split_col="Part")
    assert m.classes == ["a", "b"] and m.splits[4:] == ["test", "test"]
    bad = _csv(tmp_path / "bad.csv", "Photo,Comment,Kind\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows[:2])
               + "\n2.png,x,")
    with pytest.raises(DatasetError, match="line 6: empty label"):  # multi-line cells count their lines
        from_csv(bad, path_col="Photo", label_col="Kind")


def test_load_dataset_passes_csv_options_and_rejects_them_elsewhere(tmp_path):
    _imgs(tmp_path / "c", 4)
    _csv(tmp_path / "c" / "l.csv", "f,y\n0.png,a\n1.png,\n2.png,b\n3.png,a")
    m = load_dataset(tmp_path / "c", path_col="f", label_col="y", unlabeled_empty=True)
    assert m.labeled.tolist() == [True, False, True, True]
    make_class_folders(tmp_path / "cf", {"a": 3, "b": 3})
    with pytest.raises(DatasetError, match="option 'label_sep' does not apply"):
        load_dataset(tmp_path / "cf", label_sep=";")


@pytest.mark.parametrize(
    "body, match",
    [
        ("path,a,b\n0.png,0,1\n1.png,2,0", "line 3: label column 'a' must hold 0 or 1"),
        ("path,label\n0.png,x\n1.png,", "line 3: empty label in column 'label'; pass --unlabeled-empty"),
        ("path,label\n0.png,x\n1.png,y\n0.png,y", "line 4: '0.png' also on line 2 with a different label"),
        ("name,label\n0.png,x", "cannot tell which column holds the image paths"),
        ("path,split,label\n0.png,,x", "line 2: empty split"),
    ],
)
def test_csv_errors_name_the_line(tmp_path, body, match):
    write_image(tmp_path / "0.png")
    write_image(tmp_path / "1.png", seed=1)
    p = _csv(tmp_path / "bad.csv", body)
    kw = {"label_cols": ["a", "b"]} if ",a,b" in body else {}
    with pytest.raises(DatasetError, match=match):
        from_csv(p, **kw)


def test_csv_duplicates_and_all_missing(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", seed=i)
    p = _csv(tmp_path / "d.csv", "path,label\n0.png,x\n1.png,y\n2.png,x\n3.png,y\n0.png,x")
    m = from_csv(p)
    assert len(m) == 4 and m.skipped == [("0.png", "duplicate of line 2")]
    p2 = _csv(tmp_path / "e.csv", "path,label\nno1.png,x\nno2.png,y")
    with pytest.raises(DatasetError, match="none of the 2 image files exist"):
        from_csv(p2)


# ----------------------------------------------------------------------------- label lists


def _label_list_dataset(root):
    ann, imgs = root / "annotations", root / "images"
    ann.mkdir(parents=True)
    present = range(1, 31)
    for i in present:
        write_image(imgs / f"im{i}.jpg", seed=i)
    lists = {
        "dog": [1, 2, 3, 4, 5, 6, 7, 8, 100, 101],
        "cat": [5, 9, 10, 11, 12, 13, 14, 15, 16, 17, 102],
        "rare": [18, 19, 20],
    }
    for lab, ids in lists.items():
        (ann / f"{lab}.txt").write_text("\n".join(map(str, ids)) + "\n\n")
    return ann, imgs


def test_label_lists(tmp_path):
    ann, imgs = _label_list_dataset(tmp_path / "photos")
    m = from_label_lists(ann, imgs)
    assert m.task == "multilabel" and m.classes == ["cat", "dog", "rare"]
    assert len(m) == 30  # 20 listed + 10 unlisted negatives
    assert sorted(k for k, _ in m.skipped) == ["100", "101", "102"]
    assert {r for _, r in m.skipped} == {"image file missing"}
    assert m.ids[:3] == ["im1", "im2", "im3"]
    assert m.labels[m.ids.index("im5")].tolist() == [1, 1, 0]
    assert m.labels[m.ids.index("im30")].tolist() == [0, 0, 0]
    for s in ("train", "val", "test"):
        assert m.labels[np.array(m.splits) == s, 2].sum() == 1  # 3 positives: one per split
    m2 = from_label_lists(ann, imgs, include_unlisted=False)
    assert len(m2) == 20 and (m2.labels.sum(axis=1) > 0).all()
    auto = load_dataset(tmp_path / "photos")
    assert auto.name == "photos" and auto.fingerprint() == m.fingerprint()


def test_label_lists_nothing_present(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "i").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1\n2\n")
    with pytest.raises(DatasetError, match="none of the 2 listed ids"):
        from_label_lists(tmp_path / "a", tmp_path / "i")


def test_label_lists_many_missing_ids_are_counted(tmp_path):
    ann, imgs = _label_list_dataset(tmp_path / "p")
    (ann / "dog.txt").write_text("\n".join(str(i) for i in range(1, 20001)))
    m = from_label_lists(ann, imgs)
    n_missing = sum(r == "image file missing" for _, r in m.skipped)
    assert n_missing == 20000 - 30  # cat's 102 is in range too


# ----------------------------------------------------------------------------- npz


def test_npz_single_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    p = tmp_path / "arr.npz"
    np.savez(p, images=x, labels=np.arange(20) % 3)
    m = from_npz(p)
    assert m.task == "multiclass" and m.classes == ["0", "1", "2"]
    assert m.ids[4] == "4" and m.paths[4] == f"{p}#4"
    assert m.array is x or np.array_equal(m.array, x)
    assert set(m.splits) == {"train", "val", "test"}
    m2 = from_npz(p, class_names=["a", "b", "c"])
    assert m2.classes == ["a", "b", "c"] and np.array_equal(m2.labels, m.labels)

    y = (rng.random((20, 4)) < 0.5).astype(np.int64)
    split = np.array(["train"] * 14 + ["val"] * 3 + ["test"] * 3)
    p2 = tmp_path / "ml.npz"
    np.savez(p2, x=x[..., 0], y=y, s=split)
    m3 = from_npz(p2, images_key="x", labels_key="y", split_key="s")
    assert m3.task == "multilabel" and m3.labels.dtype == np.uint8 and m3.splits == split.tolist()
    assert m3.split_seed is None


def test_npz_errors(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((3, 4, 4), dtype=np.float32), labels=np.zeros(3))
    with pytest.raises(DatasetError, match="uint8"):
        from_npz(p)
    with pytest.raises(DatasetError, match="no array 'pics'"):
        from_npz(p, images_key="pics")


# ----------------------------------------------------------------------------- auto-detection


def test_load_dataset_autodetect(tmp_path):
    make_class_folders(tmp_path / "cf", {"a": 3, "b": 3})
    make_class_folders(tmp_path / "sf" / "train", {"a": 4, "b": 4})
    make_class_folders(tmp_path / "sf" / "val", {"a": 2, "b": 2})
    np.savez(tmp_path / "n.npz", images=np.zeros((6, 4, 4), np.uint8), labels=np.array([0, 1] * 3))
    for i in range(4):
        write_image(tmp_path / "c" / f"{i}.png", seed=i)
    _csv(tmp_path / "c" / "list.csv", "path,label\n0.png,a\n1.png,b\n2.png,a\n3.png,b")
    assert detect_source(tmp_path / "cf") == "class_folders"
    assert detect_source(tmp_path / "sf") == "split_folders"
    assert detect_source(tmp_path / "n.npz") == "npz"
    assert load_dataset(tmp_path / "cf").name == "cf"
    sf = load_dataset(tmp_path / "sf", seed=3)
    assert sf.split_seed == 3 and "test" in sf.splits  # test carved out of train
    assert sf.split_fractions == (0.85, 0.0, 0.15)
    # the CLI passes the same options to every source
    sf2 = load_dataset(tmp_path / "sf", name=None, seed=3, fractions=(0.6, 0.2, 0.2))
    assert sf2.name == "sf" and sf2.split_fractions == (0.8, 0.0, 0.2)
    assert load_dataset(tmp_path / "n.npz").name == "n"
    assert load_dataset(tmp_path / "c" / "list.csv", name="mine").name == "mine"
    assert load_dataset(tmp_path / "c", name=None).name == "c"
    with pytest.raises(DatasetError, match="dataset not found"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="option 'pattern' does not apply"):
        load_dataset(tmp_path / "cf", pattern="x{id}")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="unsupported dataset file"):
        load_dataset(tmp_path / "x.txt")


def test_csv_dataset_grown_by_ten_percent_keeps_old_splits(tmp_path):
    rng = np.random.default_rng(0)
    counts = {"a": 90, "b": 60, "c": 25, "d": 12, "e": 6, "f": 3}
    rows = [(f"{c}{i}.png", c) for c, n in counts.items() for i in range(n)]
    extra = [(f"{c}x{i}.png", c) for i, c in enumerate(rng.choice(list(counts), 20, p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05]))]
    for k, (f, _) in enumerate(rows + extra):
        write_image(tmp_path / "img" / f, w=4, h=4, seed=k)

    def manifest(rs, name):
        return from_csv(_csv(tmp_path / name, "path,label\n" + "\n".join(f"img/{f},{c}" for f, c in rs)), seed=4)

    old, new = manifest(rows, "old.csv"), manifest(rows + extra, "new.csv")
    before = dict(zip(old.ids, old.splits, strict=True))
    after = dict(zip(new.ids, new.splits, strict=True))
    moved = [i for i in old.ids if before[i] != after[i]]
    small = {c for c, n in counts.items() if n < 20}
    assert all(i[4:5] in small for i in moved)  # ids are "img/<class><n>"
    assert len(moved) <= old.split_repairs + new.split_repairs
    assert old.info()["split_repairs"] == old.split_repairs and "moved so every class" in old.split_summary()


# ----------------------------------------------------------------------------- copies and the split


def _unique_images(root, counts):
    """Class folders whose images all differ (``make_class_folders`` reuses a seed per index)."""
    k = 0
    for c, n in counts.items():
        for i in range(n):
            write_image(root / c / f"{i:04d}.png", seed=1000 + k)
            k += 1
    return root


def test_copies_of_an_image_share_one_split_and_the_moves_are_reported(tmp_path):
    import shutil

    root = _unique_images(tmp_path / "pets", {"cat": 30, "dog": 30})
    for k in range(8):  # eight images each copied under another name (and one into the other class)
        shutil.copy(root / "cat" / f"{k:04d}.png", root / ("dog" if k == 7 else "cat") / f"copy{k}.png")
    m = from_class_folders(root, seed=0)
    split = dict(zip(m.ids, m.splits, strict=True))
    pairs = [(f"cat/{k:04d}", f"{'dog' if k == 7 else 'cat'}/copy{k}") for k in range(8)]
    assert all(split[a] == split[b] for a, b in pairs)
    # the hash alone would have put some of these copies in different splits (the test is not vacuous)
    hashed = dict(zip(m.ids, assign_splits(m.ids, m.labels, m.task, seed=0).splits, strict=True))
    apart = [p for p in pairs if hashed[p[0]] != hashed[p[1]]]
    assert apart and m.split_copies_moved == len(apart)
    assert all(split[a] == hashed[a] for a, _ in pairs)  # the copy with the smallest id keeps its split
    assert f"{len(apart)} cop" in m.split_summary() and "first copy's split" in m.split_summary()
    assert m.info()["split_copies_moved"] == len(apart)


def test_a_dataset_without_copies_keeps_its_hash_split(tmp_path):
    """Grouping copies moves only copies: without any, every image keeps the split of its id's hash
    (so existing caches and scores stay valid); with some, only those and repairs move."""
    root = _unique_images(tmp_path / "d", {"a": 25, "b": 12, "c": 4})
    m = from_class_folders(root, seed=3)
    plain = assign_splits(m.ids, m.labels, m.task, seed=3)
    assert m.splits == plain.splits.tolist() and m.split_copies_moved == 0
    assert m.split_repairs == plain.repairs
    import shutil

    shutil.copy(root / "a" / "0001.png", root / "b" / "dup.png")
    m2 = from_class_folders(root, seed=3)
    before = dict(zip(m.ids, m.splits, strict=True))
    moved = [i for i, s in zip(m2.ids, m2.splits, strict=True) if i in before and before[i] != s]
    assert moved == [] and m2.split_copies_moved <= 1


def test_copies_are_found_by_content_not_size(tmp_path):
    from featpipe.data.duplicates import content_keys

    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 5000)
    (tmp_path / "b.bin").write_bytes(b"x" * 5000)  # a copy
    (tmp_path / "c.bin").write_bytes(b"x" * 4999 + b"y")  # same size and first 4 KiB, other content
    (tmp_path / "d.bin").write_bytes(b"y" * 5000)  # same size, other start
    keys = content_keys([str(tmp_path / f"{n}.bin") for n in "abcd"] + [str(tmp_path / "missing.bin")])
    assert keys[0] == keys[1] is not None and keys[2:] == [None, None, None]


def test_carved_val_and_array_rows_keep_copies_together(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    x[30:40] = x[0:10]  # ten rows repeated
    p = tmp_path / "arr.npz"
    np.savez(p, images=x, labels=np.arange(60) % 2)
    m = from_npz(p, seed=1)
    assert all(m.splits[k] == m.splits[k + 30] for k in range(10)) and m.split_copies_moved > 0
    # a source-given train split: the carved val never takes one copy of a train image
    split = np.array(["train"] * 50 + ["test"] * 10)
    np.savez(p, images=x, labels=np.arange(60) % 2, split=split)
    m2 = from_npz(p, seed=1)
    assert all(m2.splits[k] == m2.splits[k + 30] for k in range(10)) and "val" in m2.splits
