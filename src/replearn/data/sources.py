"""Data sources turned into an ImageSet: Fashion-MNIST, sklearn digits, image folders, numpy arrays,
and CSV files pairing images with captions or with second images.

Everything becomes square uint8 images (N, C, S, S) so that augmentation can run batched on the
device; only a folder too large for memory is decoded lazily, one image at a time, in workers.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import hashlib
import logging
import os
import threading
import urllib.request
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from replearn.data.imageset import ImageSet
from replearn.errors import ReplearnError
from replearn.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

BUILTIN = ("fashion-mnist", "digits", "shapes")
SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_SIZE = 64
# Larger images are skipped as "too large": PIL's own decompression-bomb error threshold
# (2 * Image.MAX_IMAGE_PIXELS at its default), kept even when a user sets MAX_IMAGE_PIXELS = None.
MAX_PIXELS = 178_956_970

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the .gz files as served at FASHION_URL (table in zalandoresearch/fashion-mnist's README).
# Debian's dataset-fashion-mnist re-compresses the same data, so its .gz bytes hash differently;
# only downloads are checked.
FASHION_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)  # of the 60k training images
_SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]  # Debian: dataset-fashion-mnist
_FASHION_HINT = (
    "install it with 'apt-get install dataset-fashion-mnist', or put the four .gz files from "
    f"{FASHION_URL} in a folder and set REPLEARN_DATA to that folder"
)


def data_names() -> list[str]:
    return list(BUILTIN)


def has_split(spec: str) -> bool:
    """Whether ``spec``'s "train" and "test" splits are different images (the built-ins); a folder,
    an array file or a pairs CSV returns all of itself for every split."""
    return spec in BUILTIN


def load_data(
    spec: str,
    split: str = "train",
    image_size: int | None = None,
    labels_csv: str | None = None,
    max_in_memory_bytes: int = 4 << 30,
    cache_dir: str | None = None,
    groups_csv: str | None = None,
) -> ImageSet:
    """Load a built-in dataset name, an image folder, a .npy/.npz file or a pairs CSV as an ImageSet.

    ``split``: "train", "test" or "all" for the built-ins; a folder, an array file or a CSV has no
    split, so every split returns all of it. ``image_size``: side of the square images; None keeps
    the native size (28 for fashion-mnist, 8 for digits, the array's) and means 64 for a folder or
    a CSV.
    ``cache_dir`` replaces ~/.cache/replearn as the place fashion-mnist is downloaded to.
    A built-in name wins over a folder of the same name (write ./digits for the folder).
    ``shapes`` is rendered in code (``data/shapes.py``: known factors shape, scale, rotation, x, y in
    ``ImageSet.factors``; labels are the shape), natively at ``image_size`` (default 32), once per
    process and size: "train" is the 46,080-image factorial grid, "test" 5,000 images off the grid,
    "all" train then test.
    Group ids (``ImageSet.groups``): a folder's images are grouped by the sub-folder they sit in
    (images in the folder itself have none), or by ``groups_csv`` (rows path,group) when given; an
    .npz file's by its ``groups`` array; the built-ins have none.
    Captions (``ImageSet.captions``, the ``clip`` method's pairs): a pairs CSV (header
    ``image,caption`` and an optional ``label`` column; image paths relative to the CSV's folder or
    absolute), or an .npz ``captions`` array of strings. An item with an empty caption, and a CSV row
    whose image is missing or unreadable, is skipped and listed in ``ImageSet.skipped``.
    Image pairs (``ImageSet.partners``): a pairs CSV with the header ``image,image2`` (optional
    ``label``), or an .npz ``images2`` array shaped as ``images``; both images are held in memory,
    decoded by the same rules (a CSV row whose first or second image is missing or unreadable is
    skipped, the reason naming the column). Captions and second images together are an error.
    """
    if split not in SPLITS:
        raise ReplearnError(f"unknown split: {split!r}", hint="use 'train', 'test' or 'all'")
    if not spec.strip():
        raise ReplearnError(
            "no data given", hint=f"give one of {', '.join(BUILTIN)}, an image folder or a .npy/.npz file"
        )
    path = Path(spec).expanduser()
    if labels_csv is not None and (spec in BUILTIN or not path.is_dir()):
        raise ReplearnError("labels_csv applies to image folders only", hint="drop labels_csv here")
    if groups_csv is not None and (spec in BUILTIN or not path.is_dir()):
        raise ReplearnError(
            "groups_csv applies to image folders only",
            hint="drop groups_csv here (an .npz file takes a 'groups' array)",
        )
    if spec == "fashion-mnist":
        data = _fashion_mnist(split, cache_dir)
    elif spec == "digits":
        data = _digits(split)
    elif spec == "shapes":  # rendered at the size asked for, not resized
        from replearn.data.shapes import shapes

        return shapes(split, image_size or 32)
    elif path.is_dir():
        if split == "test":
            log.info("%s is a folder and has no test split: using all of it", spec)
        return _folder(path, image_size or DEFAULT_FOLDER_SIZE, labels_csv, max_in_memory_bytes, groups_csv)
    elif path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        data = _arrays(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        return _pairs(path, image_size or DEFAULT_FOLDER_SIZE, max_in_memory_bytes)
    elif path.exists():
        raise ReplearnError(
            f"not an image folder, .npy/.npz file or pairs .csv: {spec}",
            hint="give a folder of images, a numpy file, or a CSV with the header image,caption or image,image2",
        )
    else:
        close = difflib.get_close_matches(spec.lower(), BUILTIN, n=1, cutoff=0.6)
        raise ReplearnError(
            f"no such folder or dataset: {spec}",
            hint=(f"did you mean '{close[0]}'? " if close else "")
            + f"built-in datasets: {', '.join(BUILTIN)}; otherwise give an image folder, a .npy/.npz file or a pairs .csv",
        )
    return _resized(data, image_size) if image_size and image_size != data.size else data


def _resized(data: ImageSet, size: int) -> ImageSet:
    assert data.images is not None
    partners = None if data.partners is None else _resize(data.partners, size)
    return dataclasses.replace(data, images=_resize(data.images, size), size=size, partners=partners)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.empty(len(images), images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(images), 4096):  # chunks bound the float copy
        x = images[start : start + 4096].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 4096] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ---------------------------------------------------------------- Fashion-MNIST


def _fashion_mnist(split: str, cache_dir: str | None) -> ImageSet:
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    names = [f"{p}-{kind}" for p in parts for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    files = _find_fashion(names, cache_dir)
    arrays = [_read_idx(files[n]) for n in names]
    images, labels = np.concatenate(arrays[0::2]), np.concatenate(arrays[1::2])
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ReplearnError(
            f"{files[names[0]].parent} does not hold fashion-mnist: images {images.shape}, labels {labels.shape}",
            hint=_FASHION_HINT,
        )
    split_names = {"train": "train", "t10k": "test"}
    ids = [f"{split_names[p]}/{i}" for p, a in zip(parts, arrays[0::2], strict=True) for i in range(len(a))]
    return ImageSet(
        ids=ids,
        labels=torch.from_numpy(labels.astype(np.int64)),
        name="fashion-mnist",
        channels=1,
        size=28,
        images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
        classes=list(FASHION_CLASSES),
        mean=FASHION_MEAN,
        std=FASHION_STD,
    )


def _fashion_dirs(cache_dir: str | None) -> list[Path]:
    env = os.environ.get("REPLEARN_DATA")
    first = [Path(env).expanduser(), Path(env).expanduser() / "fashion-mnist"] if env else []
    return [*first, *_SYSTEM_DIRS, _cache_root(cache_dir) / "fashion-mnist"]


def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "replearn"


def _find_fashion(names: list[str], cache_dir: str | None) -> dict[str, Path]:
    for folder in _fashion_dirs(cache_dir):
        found = {n: next((p for p in (folder / f"{n}.gz", folder / n) if p.is_file()), None) for n in names}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return _download(names, _cache_root(cache_dir) / "fashion-mnist")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _download(names: list[str], folder: Path) -> dict[str, Path]:
    files = {}
    for name in names:
        url = f"{FASHION_URL}{name}.gz"
        log.info("downloading %s", url)
        try:
            data = _fetch(url)
        except OSError as e:
            raise ReplearnError(
                f"fashion-mnist is not on this machine and downloading it failed ({e})", hint=_FASHION_HINT
            ) from e
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != FASHION_MD5[name]:
            raise ReplearnError(
                f"downloaded {name}.gz has md5 {got}, expected {FASHION_MD5[name]}",
                hint="the download was damaged or the file changed upstream: retry, or " + _FASHION_HINT,
            )
        try:
            atomic_write_bytes(data, folder / f"{name}.gz")
            files[name] = folder / f"{name}.gz"
        except OSError as e:
            raise ReplearnError(f"cannot write to {folder}: {e}", hint="pass a writable cache_dir") from e
    return files


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: zero bytes, dtype 0x08 = ubyte, ndim, big-endian dims, data)."""
    try:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise ReplearnError(f"cannot read {path}: {e}", hint=_FASHION_HINT) from e
    ndim = raw[3] if len(raw) > 3 else 0
    shape = tuple(np.frombuffer(raw, ">u4", ndim, 4).tolist()) if len(raw) >= 4 + 4 * ndim else ()
    if raw[:3] != b"\0\0\x08" or not shape or len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ReplearnError(f"{path} is not a uint8 IDX file (damaged?)", hint=_FASHION_HINT)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()  # copy: writable


# ---------------------------------------------------------------- sklearn digits


def _digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits  # slow import, only when asked for

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(images))
    n_train = int(0.8 * len(images))
    index = {"train": order[:n_train], "test": order[n_train:], "all": np.arange(len(images))}[split]
    mean, std = _stats(torch.from_numpy(images[order[:n_train]]))
    return ImageSet(
        ids=[f"digits/{i}" for i in index],
        labels=torch.from_numpy(digits.target[index].astype(np.int64)),
        name="digits",
        channels=1,
        size=8,
        images=torch.from_numpy(images[index]),
        classes=[str(d) for d in range(10)],
        mean=mean,
        std=std,
    )


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, summed in float64 chunks to bound memory."""
    c = images.shape[1]
    s, ss, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in images.split(256):
        x = chunk.transpose(0, 1).reshape(c, -1).double() / 255
        s, ss, n = s + x.sum(1), ss + (x * x).sum(1), n + x.shape[1]
    mean = s / n
    std = (ss / n - mean**2).clamp_min(0).sqrt().clamp_min(1 / 255)  # a constant image must not divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())


# ---------------------------------------------------------------- numpy arrays


def _arrays(path: Path) -> ImageSet:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            images, labels, groups, captions, images2 = loaded, None, None, None, None
        else:
            with loaded:
                if "images" not in loaded.files:
                    raise ReplearnError(
                        f"{path} has no array named 'images' (it has: {', '.join(loaded.files) or 'none'})",
                        hint="save with numpy.savez(path, images=..., labels=...)",
                    )
                images = loaded["images"]
                labels = loaded["labels"] if "labels" in loaded.files else None
                groups = loaded["groups"] if "groups" in loaded.files else None
                captions = loaded["captions"] if "captions" in loaded.files else None
                images2 = loaded["images2"] if "images2" in loaded.files else None
    except (OSError, ValueError, EOFError) as e:
        raise ReplearnError(
            f"cannot read {path}: {e}", hint="save with numpy.save / numpy.savez (no pickled objects)"
        ) from e
    x = _nchw_uint8(images, path.name)
    y, classes = _array_labels(labels, len(x), path.name)
    texts = _array_captions(captions, len(x), path.name)
    partners = _array_partners(images2, x, path.name, texts is not None)
    mean, std = _stats(torch.from_numpy(x[_spread(len(x), 2000)]))
    data = ImageSet(
        ids=[str(i) for i in range(len(x))],
        labels=y,
        name=path.stem,
        channels=x.shape[1],
        size=x.shape[2],
        images=torch.from_numpy(x),
        classes=classes,
        mean=mean,
        std=std,
        groups=_array_groups(groups, len(x), path.name),
        captions=texts,
        partners=partners,
    )
    if texts is None or all(texts):
        return data
    kept = [i for i, t in enumerate(texts) if t]
    if not kept:
        raise ReplearnError(f"{path.name}: every caption is empty", hint="captions are one non-empty string per image")
    data = data.subset(kept)
    data.skipped = [(str(i), "empty caption") for i, t in enumerate(texts) if not t]
    log.warning("skipped %d of %d images in %s: empty caption", len(texts) - len(kept), len(texts), path.name)
    return data


def _nchw_uint8(images: np.ndarray, name: str) -> np.ndarray:
    shape = images.shape
    if images.ndim == 4 and shape[3] in (1, 3) and shape[1] == shape[2]:
        x = images.transpose(0, 3, 1, 2)  # (N, H, W, C)
    else:
        x = images[:, None] if images.ndim == 3 else images
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or not len(x):
        raise ReplearnError(
            f"{name}: images of shape {shape} are not square images with 1 or 3 channels",
            hint="use (N,H,W), (N,H,W,C) or (N,C,H,W) with H == W and C 1 or 3; crop or resize first",
        )
    if x.dtype.kind == "f":
        lo, hi = (float(x.min()), float(x.max())) if np.isfinite(x).all() else (float("nan"),) * 2
        if not (0 <= lo and hi <= 1):
            raise ReplearnError(
                f"{name}: float images must lie in [0, 1], found [{lo}, {hi}]",
                hint="divide by 255, or save uint8 images",
            )
        x = np.rint(x * 255)
    elif x.dtype.kind not in "ui" or (x.size and (x.min() < 0 or x.max() > 255)):
        raise ReplearnError(
            f"{name}: images of dtype {x.dtype} must be uint8 (0..255) or float in [0, 1]",
            hint="convert with .astype(numpy.uint8) or scale to [0, 1]",
        )
    return np.ascontiguousarray(x, dtype=np.uint8)


def _array_partners(images2: np.ndarray | None, x: np.ndarray, name: str, captions: bool) -> torch.Tensor | None:
    """An .npz ``images2`` array: the second image of each pair, shaped as ``images`` once in (N, C, H, W)."""
    if images2 is None:
        return None
    if captions:
        raise ReplearnError(
            f"{name} has both captions and images2",
            hint="a pair is an image with a caption or with a second image: save one of the two arrays",
        )
    y = _nchw_uint8(images2, f"{name} (images2)")
    if y.shape != x.shape:
        raise ReplearnError(
            f"{name}: images2 of shape {y.shape} (as N,C,H,W) do not match images of shape {x.shape}",
            hint="images2 holds one second image per image, with the same channels and size",
        )
    return torch.from_numpy(y)


def _array_labels(labels: np.ndarray | None, n: int, name: str) -> tuple[torch.Tensor, list[str] | None]:
    if labels is None:
        return torch.full((n,), -1, dtype=torch.long), None
    if labels.shape != (n,):
        raise ReplearnError(
            f"{name}: labels of shape {labels.shape} do not match {n} images",
            hint="labels are one value per image, shape (N,)",
        )
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    values = [str(v) for v in labels.tolist()]
    y, classes = _encode_labels(values, name)
    return torch.tensor(y, dtype=torch.long), classes


def _array_groups(groups: np.ndarray | None, n: int, name: str) -> torch.Tensor | None:
    if groups is None:
        return None
    if groups.shape != (n,):
        raise ReplearnError(
            f"{name}: groups of shape {groups.shape} do not match {n} images",
            hint="groups are one id per image, shape (N,); -1 for none",
        )
    if groups.dtype.kind == "f" and np.isfinite(groups).all() and (groups == np.round(groups)).all():
        groups = groups.astype(np.int64)
    return torch.tensor(_encode_groups([str(v) for v in groups.tolist()]), dtype=torch.long)


def _array_captions(captions: np.ndarray | None, n: int, name: str) -> list[str] | None:
    if captions is None:
        return None
    if captions.shape != (n,) or captions.dtype.kind not in "US":
        raise ReplearnError(
            f"{name}: captions of shape {captions.shape} and dtype {captions.dtype} are not {n} strings",
            hint="captions are one string per image: numpy.array(list_of_str), shape (N,)",
        )
    return [(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)).strip() for c in captions.tolist()]


def _encode_groups(values: list[str]) -> list[int]:
    """Group names (any strings; "" or "-1" = none) -> ids 0.. in sorted name order, -1 for none."""
    names = sorted({v for v in values if v not in ("", "-1")})
    index = {g: i for i, g in enumerate(names)}
    return [index.get(v, -1) for v in values]


def _encode_labels(values: list[str], source: str) -> tuple[list[int], list[str] | None]:
    """Integers are class indices as they are (-1 or empty = unknown); names get sorted indices."""
    names = [v for v in values if v not in ("", "-1")]
    if not names:
        return [-1] * len(values), None
    try:
        ints = [int(v) if v else -1 for v in values]
    except ValueError:
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        return [index.get(v, -1) for v in values], classes
    if min(ints) < -1:
        raise ReplearnError(
            f"{source}: negative class index {min(ints)}", hint="use -1 or leave empty for unknown"
        )
    return ints, [str(i) for i in range(max(ints) + 1)]


# ---------------------------------------------------------------- image folders


def _folder(
    root: Path, size: int, labels_csv: str | None, max_bytes: int, groups_csv: str | None = None
) -> ImageSet:
    files = _image_files(root)
    if not files:
        raise ReplearnError(
            f"folder {root} holds no images",
            hint=f"image files end in {' '.join(IMAGE_SUFFIXES)} (any case); other files are ignored",
        )
    labels, classes = _csv_labels(root, files, labels_csv) if labels_csv else _subfolder_labels(files)
    groups = _csv_groups(root, files, groups_csv) if groups_csv else _subfolder_groups(files)
    read = _read_images([str(root / f) for f in files], files, size, max_bytes, f"in {root}")
    kept = read.kept
    listed = set(files)
    for csv_file, what in ((labels_csv, "label"), (groups_csv, "group")):  # rows naming no image: listed
        if csv_file:
            read.skipped += [(p, f"named in {Path(csv_file).name}, but no such image in the folder")
                             for p in _csv_column(root, files, csv_file, what, quiet=True) if p not in listed]
    return ImageSet(
        ids=[files[i] for i in kept],
        labels=torch.tensor([labels[i] for i in kept], dtype=torch.long),
        name=root.resolve().name,
        channels=read.channels,
        size=size,
        images=read.images,
        decode=read.decode,
        classes=classes,
        mean=read.mean,
        std=read.std,
        skipped=read.skipped,
        groups=torch.tensor([groups[i] for i in kept], dtype=torch.long),
    )


@dataclasses.dataclass
class _Read:
    kept: list[int]  # positions of the usable files
    skipped: list[tuple[str, str]]  # (name, reason)
    channels: int
    images: torch.Tensor | None
    decode: FolderDecoder | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _read_images(paths: list[str], names: list[str], size: int, max_bytes: int, where: str) -> _Read:
    """Decode image files (or, past ``max_bytes``, check them for lazy decoding); an unusable file
    is skipped under its name in ``names``; none usable is a ReplearnError."""
    workers = min(8, os.cpu_count() or 1)
    # 3 channels: whether all images are gray is known only after opening them
    eager = len(paths) * 3 * size * size <= max_bytes
    with ThreadPoolExecutor(workers) as pool:
        if eager:
            out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
            kept, skipped, gray = [], [], True
            for i, (image, reason) in enumerate(pool.map(partial(_decode_file, size=size), paths)):
                if image is None:
                    skipped.append((names[i], reason))
                    continue
                out[len(kept)] = image  # a gray (1, S, S) broadcasts to 3 channels
                gray &= image.shape[0] == 1
                kept.append(i)
        else:
            checks = list(pool.map(_check_file, paths))
            kept = [i for i, (g, _) in enumerate(checks) if g is not None]
            skipped = [(names[i], r) for i, (g, r) in enumerate(checks) if g is None]
            gray = all(checks[i][0] for i in kept)
        if not kept:
            raise ReplearnError(
                f"none of the {len(paths)} image files {where} could be read",
                hint="; ".join(f"{p}: {r}" for p, r in skipped[:3]) + (" ..." if len(skipped) > 3 else ""),
            )
        if skipped:
            log.warning(
                "skipped %d of %d images %s (see ImageSet.skipped)", len(skipped), len(paths), where
            )
        channels = 1 if gray else 3
        images, decode = None, None
        if eager:
            images = out[: len(kept), :channels]
            if channels == 1 or len(kept) < len(paths):
                images = images.clone()  # not a view that keeps the whole buffer alive
            sample = images[_spread(len(kept), 2000)]
        else:
            decode = FolderDecoder([paths[i] for i in kept], size, channels)
            sample = torch.stack(list(pool.map(decode, _spread(len(kept), 256))))
    mean, std = _stats(sample)  # evenly spread, as folders are often sorted by class
    return _Read(kept, skipped, channels, images, decode, mean, std)


# ---------------------------------------------------------------- pairs CSV (image, caption or image2)


_PAIRS_USAGE = (
    "a pairs CSV starts with the header image,caption or image,image2 (optionally ,label); each row "
    "gives an image path, relative to the CSV's folder or absolute, and its caption or second image"
)


def _pairs(path: Path, size: int, max_bytes: int) -> ImageSet:
    """A CSV of pairs: header ``image,caption`` or ``image,image2`` (any order, more columns ignored,
    an optional ``label``); one row per pair, so an image may appear in several rows. Both
    ``caption`` and ``image2`` is an error: a pair is an image with a caption or with a second image."""
    usage = _PAIRS_USAGE
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReplearnError(f"cannot read pairs file {path}: {e}", hint=usage) from e
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "image" not in header or not ("caption" in header or "image2" in header):
        raise ReplearnError(f"{path} has no header row image,caption or image,image2", hint=usage)
    if "caption" in header and "image2" in header:
        raise ReplearnError(
            f"{path} has both a caption and an image2 column",
            hint="a pair is an image with a caption or with a second image: drop one of the two columns",
        )
    if "image2" in header:
        return _image_pairs(path, rows, header, size, max_bytes)
    col = {name: header.index(name) for name in ("image", "caption", "label") if name in header}
    names, paths, captions, labels, skipped = [], [], [], [], []
    for line, row in enumerate(rows[1:], start=2):  # line numbers as an editor shows them (no blank lines)
        cell = {k: row[i].strip() if i < len(row) else "" for k, i in col.items()}
        image = cell["image"]
        where = image or f"{path.name} row {line}"
        full = Path(image).expanduser()
        full = full if full.is_absolute() else path.parent / full
        if not image:
            skipped.append((where, f"row {line}: no image path"))
        elif not cell["caption"]:
            skipped.append((where, f"row {line}: empty caption"))
        elif not full.is_file():
            skipped.append((where, f"row {line}: no such file"))
        else:
            names.append(image)
            paths.append(str(full))
            captions.append(cell["caption"])
            labels.append(cell.get("label", ""))
    if not paths:
        raise ReplearnError(
            f"no usable image-caption pair in {path} ({len(skipped)} row(s) skipped)",
            hint="; ".join(f"{p}: {r}" for p, r in skipped[:3]) + (" ..." if len(skipped) > 3 else "") or usage,
        )
    if skipped:
        log.warning("skipped %d of %d rows of %s (see ImageSet.skipped)", len(skipped), len(rows) - 1, path)
    read = _read_images(paths, names, size, max_bytes, f"named in {path}")
    skipped += read.skipped
    codes, classes = _encode_labels([labels[i] for i in read.kept], path.name)
    return ImageSet(
        ids=[names[i] for i in read.kept],
        labels=torch.tensor(codes, dtype=torch.long),
        name=path.stem,
        channels=read.channels,
        size=size,
        images=read.images,
        decode=read.decode,
        classes=classes,
        mean=read.mean,
        std=read.std,
        skipped=skipped,
        captions=[captions[i] for i in read.kept],
    )


def _image_pairs(path: Path, rows: list[list[str]], header: list[str], size: int, max_bytes: int) -> ImageSet:
    """The rows of a pairs CSV ``image,image2[,label]``: both images decoded in memory by the
    folders' rules, the second as ``ImageSet.partners``. A row whose first or second image is
    missing or unreadable is skipped, its reason naming the column."""
    col = {name: header.index(name) for name in ("image", "image2", "label") if name in header}
    pairs, skipped = [], []  # pairs: (line, image cell, image2 cell, label cell)
    for line, row in enumerate(rows[1:], start=2):
        cell = {k: row[i].strip() if i < len(row) else "" for k, i in col.items()}
        for k in ("image", "image2"):
            if not cell[k] or not _pair_path(path, cell[k]).is_file():
                reason = "no such file" if cell[k] else "no path"
                skipped.append((cell[k] or f"{path.name} row {line}", f"row {line}: {k}: {reason}"))
                break
        else:
            pairs.append((line, cell["image"], cell["image2"], cell.get("label", "")))
    if not pairs:
        raise ReplearnError(
            f"no usable image pair in {path} ({len(skipped)} row(s) skipped)",
            hint="; ".join(f"{p}: {r}" for p, r in skipped[:3]) + (" ..." if len(skipped) > 3 else ""),
        )
    need = 2 * len(pairs) * 3 * size * size  # the step slices partners by index: no lazy decoding
    if need > max_bytes:
        raise ReplearnError(
            f"{len(pairs)} image pairs of {size}x{size} px need {need / 2**30:.1f} GiB, more than the "
            f"{max_bytes / 2**30:.1f} GiB allowed in memory; image pairs must fit in memory",
            hint=f"pass --image-size {int((max_bytes / (2 * len(pairs) * 3)) ** 0.5)} or less, or use fewer pairs",
        )
    if skipped:
        log.warning("skipped %d of %d rows of %s (see ImageSet.skipped)", len(skipped), len(rows) - 1, path)
    images = partners = None
    for k, column in ((1, "image"), (2, "image2")):  # the first images, then the second ones of the rows kept
        where = f"in the {column} column of {path}"
        read = _read_images([str(_pair_path(path, p[k])) for p in pairs], [p[k] for p in pairs], size, max_bytes, where)
        assert read.images is not None  # eager: need <= max_bytes
        reason, kept = dict(read.skipped), set(read.kept)  # a file named twice fails alike in both rows
        skipped += [(p[k], f"row {p[0]}: {column}: {reason[p[k]]}") for i, p in enumerate(pairs) if i not in kept]
        pairs = [pairs[i] for i in read.kept]
        if k == 1:
            images = read.images
        else:
            images, partners = images[read.kept], read.images
    if images.shape[1] != partners.shape[1]:  # one side all gray, the other in colour: both in colour
        images, partners = images.expand(-1, 3, -1, -1).contiguous(), partners.expand(-1, 3, -1, -1).contiguous()
    codes, classes = _encode_labels([p[3] for p in pairs], path.name)
    mean, std = _stats(images[_spread(len(images), 2000)])  # of the first images, as the recipe normalises both
    return ImageSet(
        ids=[p[1] for p in pairs],
        labels=torch.tensor(codes, dtype=torch.long),
        name=path.stem,
        channels=images.shape[1],
        size=size,
        images=images,
        classes=classes,
        mean=mean,
        std=std,
        skipped=skipped,
        partners=partners,
    )


def _pair_path(csv_path: Path, cell: str) -> Path:
    full = Path(cell).expanduser()
    return full if full.is_absolute() else csv_path.parent / full


def _spread(n: int, k: int) -> list[int]:
    return np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()


def _image_files(root: Path) -> list[str]:
    """Relative posix paths of image files, recursively; hidden files and folders are left out."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop, or a second link to the same folder
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # sorted: the first link wins
        rel = Path(dirpath).relative_to(root)
        found += [
            (rel / f).as_posix()
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
        ]
    return sorted(found)


def _subfolder_labels(files: list[str]) -> tuple[list[int], list[str] | None]:
    """Class sub-folders when every image lies below one of at least two sub-folders; else unlabelled."""
    tops = [f.split("/", 1)[0] if "/" in f else None for f in files]
    classes = sorted({t for t in tops if t is not None})
    if None in tops or len(classes) < 2:
        return [-1] * len(files), None
    index = {c: i for i, c in enumerate(classes)}
    return [index[t] for t in tops], classes


def _subfolder_groups(files: list[str]) -> list[int]:
    """Group = the sub-folder an image sits in (its whole relative path, e.g. 'shoes/pair7'); -1 for
    images in the folder itself."""
    folders = [f.rsplit("/", 1)[0] if "/" in f else None for f in files]
    names = sorted({d for d in folders if d is not None})
    index = {d: i for i, d in enumerate(names)}
    return [index[d] if d is not None else -1 for d in folders]


def _csv_column(root: Path, files: list[str], csv_file: str, what: str, quiet: bool = False) -> dict[str, str]:
    """{path: value} from a 'path,<what>' CSV (a header row is skipped); rows must be complete and
    agree with each other, and at least one path must name an image. Paths naming no image are kept
    (the folder loader lists them as skipped); ``quiet`` drops the warning about them."""
    try:
        with open(Path(csv_file).expanduser(), newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReplearnError(
            f"cannot read {what}s file {csv_file}: {e}", hint=f"a CSV file with rows 'path,{what}'"
        ) from e
    position = {f: i for i, f in enumerate(files)}
    if rows and _norm_path(rows[0][0]) not in position:
        rows = rows[1:]  # the header (a first row that names an image is data)
    given: dict[str, str] = {}
    for row in rows:
        if len(row) < 2:
            raise ReplearnError(
                f"{csv_file}: the row for {row[0]!r} has no {what}", hint=f"each row is 'path,{what}'"
            )
        path, value = _norm_path(row[0]), row[1].strip()
        if given.setdefault(path, value) != value:
            raise ReplearnError(
                f"{csv_file} gives {path} two {what}s: {given[path]!r} and {value!r}",
                hint="keep one row per image",
            )
    matched = sum(p in position for p in given)
    if given and not matched:
        raise ReplearnError(
            f"no path in {csv_file} names an image in {root}",
            hint=f"paths are relative to the folder, like {files[0]!r}",
        )
    if matched < len(given) and not quiet:
        log.warning("%d paths in %s name no image in %s (listed as skipped)", len(given) - matched, csv_file, root)
    return given


def _csv_labels(root: Path, files: list[str], labels_csv: str) -> tuple[list[int], list[str] | None]:
    given = _csv_column(root, files, labels_csv, "label")
    codes, classes = _encode_labels(list(given.values()), labels_csv)
    by_path = dict(zip(given, codes, strict=True))
    return [by_path.get(f, -1) for f in files], classes


def _csv_groups(root: Path, files: list[str], groups_csv: str) -> list[int]:
    given = _csv_column(root, files, groups_csv, "group")
    return _encode_groups([given.get(f, "") for f in files])


def _norm_path(p: str) -> str:
    return PurePosixPath(p.strip().replace("\\", "/")).as_posix()  # "./a\\b.jpg" -> "a/b.jpg"


class FolderDecoder:
    """decode(i) of a lazy folder ImageSet; a class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, paths: list[str], size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels
        self._warned: set[int] = set()

    def __call__(self, i: int) -> torch.Tensor:
        image, reason = _decode_file(self.paths[i], self.size)
        if image is None:
            # The validation pass is cheap, so some damage (e.g. a truncated JPEG: verify() does not
            # decode JPEG data) shows up only now; a black image keeps a long training run alive.
            if i not in self._warned:
                self._warned.add(i)
                log.warning("cannot decode %s (%s): using a black image", self.paths[i], reason)
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8)
        return image.expand(self.channels, -1, -1).contiguous() if image.shape[0] < self.channels else image


class _Skip(Exception):
    """A file that is readable but not usable; the message is the reason."""


_OPEN_LOCK = threading.Lock()


def _open(path: str) -> Image.Image:
    if os.path.getsize(path) == 0:
        raise _Skip("empty file")
    # catch_warnings changes process-wide state, hence the lock; opening reads only the header.
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS below decides
        im = Image.open(path)
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise _Skip(f"too large ({im.width}x{im.height} pixels)")
    return im


def _reason(e: Exception) -> str:
    if isinstance(e, _Skip):
        return str(e)
    if isinstance(e, Image.DecompressionBombError):
        return "too large"
    if isinstance(e, UnidentifiedImageError):
        return "not an image (unknown format)"
    text = (str(e).splitlines() or [type(e).__name__])[0]
    if isinstance(e, EOFError) or "truncated" in text.lower():
        return "truncated"
    return f"cannot decode: {text[:80]}"


def _is_gray(mode: str) -> bool:
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def _check_file(path: str) -> tuple[bool | None, str]:
    """(is_gray, "") for a file that passes the cheap checks (header, size, verify()), else (None, reason)."""
    try:
        with _open(path) as im:
            gray = _is_gray(im.mode)
            im.verify()
        return gray, ""
    except Exception as e:  # any failure only skips this file
        return None, _reason(e)


def _decode_file(path: str, size: int) -> tuple[torch.Tensor | None, str]:
    """uint8 (1 or 3, size, size), upright, shorter side resized to size and centre-cropped."""
    try:
        with _open(path) as im:
            im.draft(None, (size, size))  # JPEG: decode at 1/2..1/8 scale, no smaller than size
            im = _to_8bit(ImageOps.exif_transpose(im))
        w, h = im.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        im = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        a = np.array(im, dtype=np.uint8)  # a writable copy for torch
    except Exception as e:  # any failure only skips this file
        return None, _reason(e)
    return torch.from_numpy(np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))), ""


def _to_8bit(im: Image.Image) -> Image.Image:
    """'L' for gray sources, 'RGB' otherwise; transparency composited on white."""
    if im.mode == "1":
        return im.convert("L")
    if im.mode.startswith("I") or im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        lo, hi = float(a.min()), float(a.max())
        if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
            a = a / 257  # 16-bit range onto 8 bits: 65535 -> 255, not clipped
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255
        else:
            a = (a - lo) * (255 / (hi - lo)) if hi > lo else a * 0
        return Image.fromarray(np.rint(a).astype(np.uint8))
    if im.mode in ("LA", "La", "P", "PA", "RGBA", "RGBa") or "transparency" in im.info:
        gray = im.mode in ("L", "LA", "La")
        flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
        flat.alpha_composite(im.convert("RGBA"))
        return flat.convert("L" if gray else "RGB")
    return im if im.mode in ("L", "RGB") else im.convert("RGB")  # CMYK, YCbCr, LAB, ...
