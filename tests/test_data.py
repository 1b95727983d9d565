"""Data sources: built-ins, their lookup and download, image folders with every kind of bad file, arrays."""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import re
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagefactory import SIZE, make_bad_image_folder, make_class_folder, png_header_only
from replearn.data import ImageSet, data_names, load_data, sources
from replearn.errors import ReplearnError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- Fashion-MNIST


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _fake_fashion(n_train: int, n_test: int, value: int) -> dict[str, bytes]:
    """IDX .gz bytes of a tiny Fashion-MNIST look-alike; every pixel is `value`."""
    out = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        out[f"{part}-images-idx3-ubyte"] = _idx_gz(np.full((n, 28, 28), value))
        out[f"{part}-labels-idx1-ubyte"] = _idx_gz(np.arange(n) % 10)
    return out


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / f"{name}.gz").write_bytes(data)
    return folder


@pytest.fixture
def no_fashion_anywhere(monkeypatch, tmp_path):
    """No REPLEARN_DATA, no system copy, an empty cache, and no network."""
    monkeypatch.delenv("REPLEARN_DATA", raising=False)
    monkeypatch.setattr(sources, "_SYSTEM_DIRS", [tmp_path / "system"])

    def offline(url):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(sources, "_fetch", offline)
    return tmp_path / "cache"


@pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist absent"
)
def test_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv("REPLEARN_DATA", raising=False)
    train = load_data("fashion-mnist")
    test = load_data("fashion-mnist", split="test")
    for data, n in ((train, 60000), (test, 10000)):
        assert data.images.shape == (n, 1, 28, 28) and data.images.dtype == torch.uint8
        assert data.labels.bincount().tolist() == [n // 10] * 10
        assert (data.channels, data.size, len(set(data.ids))) == (1, 28, n)
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    # the stored statistics are those of the parsed training pixels (a wrong offset would shift them)
    pixels = train.images.double() / 255
    assert pixels.mean().item() == pytest.approx(train.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(train.std[0], abs=1e-4)


def test_fashion_md5_table_matches_upstream_readme():
    readme = Path("/usr/share/doc/dataset-fashion-mnist/README.md.gz")
    if not readme.exists():
        pytest.skip("upstream README absent")
    text = gzip.decompress(readme.read_bytes()).decode()
    table = dict(re.findall(r"`([a-z0-9-]+)\.gz`.*`([0-9a-f]{32})`", text))
    assert table == sources.FASHION_MD5


def test_replearn_data_comes_first_then_its_subfolder_then_system_then_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "_SYSTEM_DIRS", [_write(tmp_path / "system", _fake_fashion(4, 2, 30))])
    cache = _write(tmp_path / "cache" / "fashion-mnist", _fake_fashion(5, 2, 40)).parent

    monkeypatch.setenv("REPLEARN_DATA", str(_write(tmp_path / "direct", _fake_fashion(3, 2, 10))))
    _write(tmp_path / "direct" / "fashion-mnist", _fake_fashion(7, 2, 99))  # the folder itself wins
    data = load_data("fashion-mnist", cache_dir=str(cache))
    assert len(data) == 3 and data.images.unique().tolist() == [10]
    assert data.labels.tolist() == [0, 1, 2] and data.ids == ["train/0", "train/1", "train/2"]

    monkeypatch.setenv(
        "REPLEARN_DATA", str(_write(tmp_path / "root" / "fashion-mnist", _fake_fashion(6, 2, 20)).parent)
    )
    assert len(load_data("fashion-mnist", cache_dir=str(cache))) == 6

    monkeypatch.delenv("REPLEARN_DATA")
    assert len(load_data("fashion-mnist", cache_dir=str(cache))) == 4
    monkeypatch.setattr(sources, "_SYSTEM_DIRS", [tmp_path / "nothing"])
    both = load_data("fashion-mnist", split="all", cache_dir=str(cache))
    assert len(both) == 7 and both.ids[-2:] == ["test/0", "test/1"]


def test_download_verifies_md5_and_writes_the_cache(monkeypatch, no_fashion_anywhere):
    fake = _fake_fashion(3, 2, 50)
    monkeypatch.setattr(sources, "FASHION_MD5", {k: hashlib.md5(v).hexdigest() for k, v in fake.items()})
    fetched = []

    def fetch(url):
        fetched.append(url)
        return fake[url.removeprefix(sources.FASHION_URL).removesuffix(".gz")]

    monkeypatch.setattr(sources, "_fetch", fetch)
    data = load_data("fashion-mnist", split="test", cache_dir=str(no_fashion_anywhere))
    assert len(data) == 2 and data.images.unique().tolist() == [50]
    assert fetched == [
        sources.FASHION_URL + "t10k-images-idx3-ubyte.gz",
        sources.FASHION_URL + "t10k-labels-idx1-ubyte.gz",
    ]
    folder = no_fashion_anywhere / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert (folder / "t10k-images-idx3-ubyte.gz").read_bytes() == fake["t10k-images-idx3-ubyte"]
    load_data("fashion-mnist", split="test", cache_dir=str(no_fashion_anywhere))
    assert len(fetched) == 2  # the second load reads the cache


def test_download_with_a_wrong_checksum_raises_and_leaves_no_file(monkeypatch, no_fashion_anywhere):
    monkeypatch.setattr(sources, "_fetch", lambda url: b"<html>moved</html>")
    with pytest.raises(ReplearnError, match="md5") as info:
        load_data("fashion-mnist", cache_dir=str(no_fashion_anywhere))
    assert "retry" in info.value.hint
    folder = no_fashion_anywhere / "fashion-mnist"
    assert not folder.exists() or not any(folder.iterdir())


def test_fashion_mnist_nowhere_and_offline_says_how_to_get_it(no_fashion_anywhere):
    with pytest.raises(ReplearnError, match="downloading it failed") as info:
        load_data("fashion-mnist", cache_dir=str(no_fashion_anywhere))
    assert "apt-get install dataset-fashion-mnist" in info.value.hint and "REPLEARN_DATA" in info.value.hint


def test_damaged_idx_file_is_a_user_error(monkeypatch, tmp_path):
    files = _fake_fashion(3, 2, 1)
    files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-20]
    monkeypatch.setenv("REPLEARN_DATA", str(_write(tmp_path, files)))
    with pytest.raises(ReplearnError, match="cannot read|not a uint8 IDX"):
        load_data("fashion-mnist")


# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_and_pixels_are_scaled():
    from sklearn.datasets import load_digits

    train, test = load_data("digits"), load_data("digits", split="test")
    assert (len(train), len(test), train.size, train.channels) == (1437, 360, 8, 1)
    index = [int(i.split("/")[1]) for i in train.ids + test.ids]
    assert sorted(index) == list(range(1797))
    raw = load_digits()
    first = int(train.ids[0].split("/")[1])
    expected = np.rint(raw.images[first] * 255 / 16).astype(np.uint8)
    assert torch.equal(train.images[0, 0], torch.from_numpy(expected)) and train.images.max() == 255
    assert train.labels[0] == raw.target[first]
    assert train.ids[:3] == ["digits/360", "digits/1773", "digits/1482"]  # seed 0 fixes the split
    assert train.classes == [str(d) for d in range(10)]


# ---------------------------------------------------------------- image folders


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_image_folder(root)


@pytest.fixture(scope="module")
def bad_eager(bad_folder):
    return load_data(str(bad_folder[0]), image_size=SIZE)


def _image(data: ImageSet, name: str) -> torch.Tensor:
    return data.images[data.ids.index(name)].int()


def test_bad_folder_keeps_the_good_and_lists_the_bad(bad_folder, bad_eager):
    _, expected = bad_folder
    assert bad_eager.ids == sorted(expected["good"])
    assert bad_eager.images.shape == (len(expected["good"]), 3, SIZE, SIZE)
    reasons = dict(bad_eager.skipped)
    assert sorted(reasons) == sorted(expected["bad"])  # ignored files are not "skipped"
    for name, word in expected["bad"].items():
        assert word in reasons[name]
    assert not bad_eager.has_labels and bad_eager.classes is None
    assert len(bad_eager.mean) == len(bad_eager.std) == 3


def test_bad_folder_conversions_give_the_right_pixels(bad_eager):
    half = SIZE // 2
    gray16 = _image(bad_eager, "gray16.png")
    assert (gray16[0, :6] == 255).all() and (gray16[0, 6:12] == 128).all() and (gray16[0, 12:] == 4).all()
    assert (gray16 == gray16[:1]).all()  # gray replicated into 3 channels
    assert (_image(bad_eager, "gray.png") == 100).all()
    bilevel = _image(bad_eager, "nested/deep/bilevel.png")
    assert (bilevel[:, :half] == 255).all() and (bilevel[:, half:] == 0).all()

    def colour(x: torch.Tensor) -> list[int]:
        return x.float().mean((1, 2)).round().int().tolist()

    rgba, palette = _image(bad_eager, "rgba.png"), _image(bad_eager, "palette.png")
    assert colour(rgba[:, :half]) == [255, 255, 255] and colour(rgba[:, half:]) == [0, 0, 255]
    assert colour(palette[:, :half]) == [0, 255, 0] and colour(palette[:, half:]) == [255, 255, 255]
    assert colour(_image(bad_eager, "upper.BMP")) == [0, 255, 0]
    r, g, b = colour(_image(bad_eager, "cmyk.jpg"))
    assert r > 240 and g < 15 and b < 15

    def near(x: torch.Tensor, rgb: tuple) -> bool:
        return bool((x.float().mean((1, 2)) - torch.tensor(rgb)).abs().max() < 20)

    # EXIF orientation 6: the stored left (red) half becomes the top, not the bottom
    upright = _image(bad_eager, "exif_rotated.jpg")
    assert near(upright[:, : half - 2], (255, 0, 0)) and near(upright[:, half + 2 :], (0, 0, 255))
    large = _image(bad_eager, "large.jpg")  # 6000x4000 red|blue, centre-cropped
    assert near(large[:, :, : half - 2], (255, 0, 0)) and near(large[:, :, half + 2 :], (0, 0, 255))


def test_lazy_folder_decodes_the_same_pixels_in_workers(bad_folder, bad_eager, caplog):
    root, expected = bad_folder
    lazy = load_data(str(root), image_size=SIZE, max_in_memory_bytes=1)
    assert lazy.images is None and lazy.channels == 3
    # verify() does not decode JPEG data: the truncated JPEG passes the cheap check, the rest do not
    assert sorted(dict(lazy.skipped)) == sorted(set(expected["bad"]) - {"truncated.jpg"})
    decode = pickle.loads(pickle.dumps(lazy.decode))  # as a DataLoader worker gets it
    for i, name in enumerate(lazy.ids):
        if name != "truncated.jpg":
            assert torch.equal(decode(i), _image(bad_eager, name).to(torch.uint8)), name
    with caplog.at_level(logging.WARNING, logger="replearn.data.sources"):
        black = decode(lazy.ids.index("truncated.jpg"))
    assert black.shape == (3, SIZE, SIZE) and not black.any() and "truncated.jpg" in caplog.text
    part = lazy.subset([1, 0])
    assert torch.equal(pickle.loads(pickle.dumps(part.decode))(0), decode(1))
    assert part.batch([0, 1]).shape == (2, 3, SIZE, SIZE)


def test_gray_only_folder_has_one_channel(tmp_path):
    Image.new("L", (20, 10), 7).save(tmp_path / "a.png")
    Image.fromarray(np.full((9, 9), 65535, np.uint16)).save(tmp_path / "b.png")
    Image.new("1", (8, 8), 1).save(tmp_path / "c.tif")
    for limit in (4 << 30, 1):
        data = load_data(str(tmp_path), image_size=8, max_in_memory_bytes=limit)
        assert data.channels == 1 and len(data.mean) == 1
        first = data.images[0] if limit > 1 else data.decode(0)
        assert first.shape == (1, 8, 8) and (first == 7).all()
        assert data.batch([1, 2]).unique().tolist() == [255]


def test_downscaling_averages_instead_of_sampling(tmp_path):
    checker = (np.indices((32, 48)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    Image.fromarray(checker).save(tmp_path / "c.png")
    x = load_data(str(tmp_path), image_size=8).images
    assert x.shape == (1, 1, 8, 8) and x.min() > 100 and x.max() < 155  # nearest would give 0 and 255


def test_image_larger_than_pils_warning_limit_loads_quietly(monkeypatch, tmp_path):
    Image.new("RGB", (6000, 4000), (0, 200, 0)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000_000)  # 24M pixels: PIL would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        data = load_data(str(tmp_path), image_size=8)
    assert len(data) == 1 and abs(int(data.images[0, 1].float().mean()) - 200) < 5
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user turned PIL's check off: ours holds
    png_header_only(tmp_path / "bomb.png", 15000, 15000)
    assert load_data(str(tmp_path), image_size=8).skipped == [("bomb.png", "too large (15000x15000 pixels)")]


def test_class_subfolders_give_labels_and_classes(tmp_path):
    truth = make_class_folder(tmp_path, {"dog": 2, "cat": 3})
    (tmp_path / "cat" / "kittens").mkdir()
    Image.new("RGB", (12, 12)).save(tmp_path / "cat" / "kittens" / "k.png")  # nested: still a cat
    truth["cat/kittens/k.png"] = "cat"
    data = load_data(str(tmp_path), image_size=12)
    assert data.classes == ["cat", "dog"]
    assert {i: data.classes[y] for i, y in zip(data.ids, data.labels.tolist(), strict=True)} == truth
    assert data.images.dtype == torch.uint8 and data.images.shape == (6, 3, 12, 12)
    first = np.array(Image.open(tmp_path / data.ids[0]))  # same size: pixels pass unchanged
    assert torch.equal(data.images[0], torch.from_numpy(first).permute(2, 0, 1))


def test_folders_without_class_subfolders_are_unlabelled(tmp_path):
    make_class_folder(tmp_path / "one", {"only": 2})  # a single sub-folder is not a class split
    make_class_folder(tmp_path / "mixed", {"a": 1, "b": 1})
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "loose.png")  # an image beside the folders
    (tmp_path / "mixed" / "a" / "loop").symlink_to(tmp_path / "mixed")  # must not recurse forever
    for name in ("one", "mixed"):
        data = load_data(str(tmp_path / name), image_size=8)
        assert data.classes is None and data.labels.tolist() == [-1] * len(data)
    assert load_data(str(tmp_path / "mixed"), split="test").ids == ["a/000.png", "b/000.png", "loose.png"]


def test_csv_labels_strings_and_integers(tmp_path):
    folder = tmp_path / "imgs"
    make_class_folder(folder, {"x": 4})
    (tmp_path / "names.csv").write_text(
        "path,label\n./x/000.png,zebra\nx\\001.png,ant\nx/002.png,zebra\nnot/there.png,bee\n"
    )
    data = load_data(str(folder), labels_csv=str(tmp_path / "names.csv"), image_size=8)
    assert data.classes == ["ant", "bee", "zebra"]  # sorted over every label in the file
    assert data.labels.tolist() == [2, 0, 2, -1]  # x/003.png is not listed
    (tmp_path / "ints.csv").write_text("file,class\nx/000.png,10\nx/001.png,2\nx/002.png,\n")
    data = load_data(str(folder), labels_csv=str(tmp_path / "ints.csv"), image_size=8)
    assert data.labels.tolist() == [10, 2, -1, -1] and len(data.classes) == 11
    (tmp_path / "headless.csv").write_text("x/003.png,ant\n")  # a first row naming an image is data
    assert load_data(str(folder), labels_csv=str(tmp_path / "headless.csv")).labels.tolist() == [
        -1,
        -1,
        -1,
        0,
    ]
    (tmp_path / "wrong.csv").write_text("path,label\nelsewhere/a.png,cat\n")
    with pytest.raises(ReplearnError, match="no path in") as info:
        load_data(str(folder), labels_csv=str(tmp_path / "wrong.csv"))
    assert "x/000.png" in info.value.hint


def _one_line(error: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(error.value) and error.value.hint
    return str(error.value)


def test_folder_errors_are_one_line_with_a_hint(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ReplearnError, match="holds no images") as info:
        load_data(str(tmp_path / "empty"))
    assert ".jpg" in _one_line(info)

    with pytest.raises(ReplearnError, match="no such folder or dataset") as info:
        load_data(str(tmp_path / "nope"))
    assert "fashion-mnist" in _one_line(info) and "digits" in info.value.hint
    with pytest.raises(ReplearnError) as info:
        load_data("fashion_mnist")
    assert "did you mean 'fashion-mnist'" in _one_line(info)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("no")
    (bad / "c.gif").write_bytes(b"GIF89a")
    with pytest.raises(ReplearnError, match="none of the 3 image files") as info:
        load_data(str(bad))
    assert "a.jpg: empty file" in _one_line(info)

    with pytest.raises(ReplearnError, match="no data given"):
        load_data("")
    with pytest.raises(ReplearnError, match="unknown split"):
        load_data("digits", split="val")
    with pytest.raises(ReplearnError, match="image folders only"):
        load_data("digits", labels_csv="labels.csv")


def test_data_names():
    assert data_names() == ["fashion-mnist", "digits", "shapes"]


# ---------------------------------------------------------------- numpy arrays


def test_npy_and_npz_layouts(tmp_path):
    gray = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    np.save(tmp_path / "gray.npy", gray)
    data = load_data(str(tmp_path / "gray.npy"))
    assert data.images.shape == (2, 1, 5, 5) and torch.equal(data.images[:, 0], torch.from_numpy(gray))
    assert data.labels.tolist() == [-1, -1] and data.classes is None and data.name == "gray"

    hwc = np.zeros((3, 4, 4, 3), np.float32)
    hwc[..., 0] = 1.0
    hwc[1, ..., 2] = 0.5
    np.savez(tmp_path / "hwc.npz", images=hwc, labels=np.array(["b", "a", "b"]))
    data = load_data(str(tmp_path / "hwc.npz"))
    assert data.images.shape == (3, 3, 4, 4) and data.images.dtype == torch.uint8
    assert (
        (data.images[:, 0] == 255).all()
        and (data.images[1, 2] == 128).all()
        and (data.images[0, 2] == 0).all()
    )
    assert data.classes == ["a", "b"] and data.labels.tolist() == [1, 0, 1]

    chw = np.random.default_rng(0).integers(0, 256, (2, 3, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "chw.npz", images=chw, labels=np.array([4, 1]))
    data = load_data(str(tmp_path / "chw.npz"), image_size=3)
    assert data.labels.tolist() == [4, 1] and data.images.shape == (2, 3, 3, 3) and data.size == 3
    assert torch.equal(load_data(str(tmp_path / "chw.npz")).images, torch.from_numpy(chw))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 4, 5), np.uint8), "not square"),
        (np.zeros((2, 2, 6, 6), np.uint8), "not square images with 1 or 3 channels"),
        (np.full((2, 4, 4), 3.0), r"must lie in \[0, 1\]"),
        (np.full((2, 4, 4), 300), "must be uint8"),
    ],
)
def test_bad_arrays_are_user_errors(tmp_path, array, match):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ReplearnError, match=match) as info:
        load_data(str(tmp_path / "x.npy"))
    _one_line(info)


def test_npz_without_images_says_what_it_has(tmp_path):
    np.savez(tmp_path / "x.npz", pixels=np.zeros((1, 2, 2)))
    with pytest.raises(ReplearnError, match="it has: pixels"):
        load_data(str(tmp_path / "x.npz"))
