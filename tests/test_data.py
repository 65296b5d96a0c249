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
    y = np.repeat(np.arange(5), [100, 40, 23, 11, 7])
    s = stratified_split(y, "multiclass", (0.7, 0.15, 0.15), seed=0)
    n = len(y)
    assert abs((s == "train").sum() - 0.7 * n) <= 2
    assert abs((s == "val").sum() - 0.15 * n) <= 2
    assert abs((s == "test").sum() - 0.15 * n) <= 2
    for c in range(5):
        sc = s[y == c]
        nc = len(sc)
        for name, f in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert abs((sc == name).sum() - f * nc) <= 1.0 + 1e-9, (c, name)


def test_split_tiny_classes_go_to_train_first():
    y = np.array([0] * 20 + [1] + [2, 2] + [3, 3, 3])
    s = stratified_split(y, "multiclass", seed=0)
    assert s[y == 1].tolist() == ["train"]
    assert "train" in s[y == 2]
    assert sorted(s[y == 3]) == ["test", "train", "val"]


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
        assert abs(len(part) - f * n) <= 0.02 * n
        assert (part.sum(axis=0) >= 1).all(), name  # every label, even the 3-positive one, in each split
        for j in range(4):  # per-label proportions close to the fractions
            assert abs(part[:, j].sum() - f * y[:, j].sum()) <= max(2, 0.03 * y[:, j].sum())


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
    assert c["val"] == 8 and c["train"] == 32  # 20% of each train class carved out
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
    for i in range(10):
        write_image(imgs / f"{i}.png", seed=i)
    lines = ["id,file,class,split"]
    lines += [f"r{i},{i}.png,{['a', 'b', 'c'][i % 3]},{'train' if i < 6 else 'test'}" for i in range(8)]
    lines += ["r8,8.png,,pred", "r9,9.png,,pred"]
    (tmp_path / "meta").mkdir()
    p = _csv(tmp_path / "meta" / "t.csv", "\n".join(lines))
    m = from_csv(p, root=imgs, id_col="id")
    assert m.ids[:2] == ["r0", "r1"]
    assert m.task == "multiclass" and _by_split(m)["pred"] == 2 and _by_split(m)["test"] == 2
    assert "val" in m.splits  # carved out of train
    assert m.labeled.sum() == 8 and (m.labels[~m.labeled] == -1).all()


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
    assert np.array_equal(from_csv(p2, labels_sep=" ").labels, m.labels)
    rows = "\n".join(f"{i}.png,{int('sea' in t)},{int('sky' in t)}" for i, t in enumerate(tags))
    p3 = _csv(tmp_path / "c.csv", "image,sea,sky\n" + rows)
    m3 = from_csv(p3)  # 0/1 columns auto-detected
    assert m3.task == "multilabel" and m3.classes == ["sea", "sky"]
    assert np.array_equal(m3.labels, m.labels[:, :2])
    assert np.array_equal(from_csv(p3, label_cols=["sky"]).labels[:, 0], m.labels[:, 1])


@pytest.mark.parametrize(
    "body, match",
    [
        ("path,a,b\n0.png,0,1\n1.png,2,0", "line 3: label column 'a' must hold 0 or 1"),
        ("path,label\n0.png,x\n1.png,", "line 3: empty label"),
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
