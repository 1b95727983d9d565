"""The labelled part of a semi-supervised run: N per class drawn with a seed, or a path,label CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from replearn.data.imageset import ImageSet
from replearn.errors import ReplearnError


@dataclass
class LabelledSplit:
    """``index`` (L,) positions in the ImageSet of the labelled images, ``labels`` (L,) their class
    indices into ``classes``."""

    index: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def per_class(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.n_classes)


def draw_per_class(data: ImageSet, per_class: int, seed: int) -> LabelledSplit:
    """``per_class`` images of every class among the data's known labels, drawn with ``seed``
    (the same seed gives the same images, whatever else the run changes)."""
    if per_class < 1:
        raise ReplearnError(f"--labels-per-class must be at least 1, not {per_class}")
    if not data.has_labels:
        raise ReplearnError(
            f"{data.name} has no labels to draw --labels-per-class from",
            hint="give --labels labels.csv (rows path,label) or put the images in class sub-folders",
        )
    known = data.labels[data.labels >= 0]
    n_classes = int(known.max()) + 1
    classes = data.classes or [str(i) for i in range(n_classes)]
    counts = torch.bincount(known, minlength=len(classes))
    short = [(classes[c], int(counts[c])) for c in range(len(classes)) if counts[c] < per_class]
    if short:
        name, have = short[0]
        raise ReplearnError(
            f"class {name!r} has {have} labelled image(s), fewer than --labels-per-class {per_class}",
            hint=f"lower --labels-per-class to {min(h for _, h in short)} or label more images of that class"
            if min(h for _, h in short) > 0 else "label some images of every class",
        )
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(len(classes)):
        members = torch.nonzero(data.labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:per_class]].sort().values)
    index = torch.cat(picked)
    return LabelledSplit(index, data.labels[index].clone(), list(classes))


def read_label_csv(data: ImageSet, path: str) -> LabelledSplit:
    """Rows ``id,label`` (a header row is allowed); ids as the data names its images (a folder:
    paths relative to it). Every row must name an image; labels are class names or indices."""
    try:
        with open(Path(path).expanduser(), newline="", encoding="utf-8-sig") as f:
            rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReplearnError(f"cannot read labels file {path}: {e}", hint="a CSV file with rows path,label") from e
    position = {_norm(i): k for k, i in enumerate(data.ids)}
    if rows and _norm(rows[0][0]) not in position and len(rows[0]) >= 2 and rows[0][1].lower() in ("label", "class"):
        rows = rows[1:]
    if not rows:
        raise ReplearnError(f"{path} holds no labels", hint="one row per labelled image: path,label")
    index, names = [], []
    for r in rows:
        if len(r) < 2 or not r[1]:
            raise ReplearnError(f"{path}: the row for {r[0]!r} has no label", hint="each row is path,label")
        k = position.get(_norm(r[0]))
        if k is None:
            example = data.ids[0] if data.ids else "?"
            raise ReplearnError(
                f"{path}: {r[0]!r} names no image of {data.name}",
                hint=f"ids are as the data names them, like {example!r}; fix or drop that row",
            )
        index.append(k)
        names.append(r[1])
    if len(set(index)) < len(index):
        dup = next(data.ids[k] for k in index if index.count(k) > 1)
        raise ReplearnError(f"{path} labels {dup!r} more than once", hint="keep one row per image")
    labels, classes = _classes(names, data.classes, path)
    split = LabelledSplit(torch.tensor(index), torch.tensor(labels), classes)
    empty = [classes[c] for c, n in enumerate(split.per_class().tolist()) if n == 0]
    if empty:
        raise ReplearnError(
            f"{path} labels no image of class {empty[0]!r}", hint="label at least one image of every class"
        )
    return split


def labelled_folder(data: ImageSet, folder: str) -> tuple[ImageSet, LabelledSplit]:
    """Labelled images in the class sub-folders of ``folder``, joined after ``data``'s images (so
    they are unlabelled images too, as every labelled one is); returns (joined data, split). The
    folder's classes become the split's; data with classes of its own must use the same names."""
    from replearn.data import load_data
    from replearn.data.imageset import concat

    labelled = load_data(folder, "train", image_size=data.size)
    if not labelled.has_labels or not labelled.classes:
        raise ReplearnError(
            f"{folder} has no class sub-folders",
            hint="put each labelled image in a sub-folder named by its class (at least two classes)",
        )
    if labelled.channels != data.channels:
        raise ReplearnError(
            f"the labelled images in {folder} have {labelled.channels} channel(s), {data.name} has {data.channels}",
            hint="give labelled images of the same kind as the data",
        )
    classes = list(labelled.classes)
    labels = data.labels
    if data.has_labels and data.classes:
        unknown = [c for c in classes if c not in data.classes]
        if unknown:
            raise ReplearnError(
                f"class {unknown[0]!r} of {folder} is not a class of {data.name}",
                hint=f"name the sub-folders after its classes: {', '.join(data.classes)}",
            )
        missing = [c for c in data.classes if c not in classes]
        if missing:
            raise ReplearnError(
                f"class {missing[0]!r} of {data.name} has no labelled image in {folder}",
                hint="add a sub-folder of labelled images for every class",
            )
        remap = torch.tensor([classes.index(c) for c in data.classes])
        labels = torch.where(data.labels >= 0, remap[data.labels.clamp_min(0)], data.labels)
    elif data.has_labels:
        labels = torch.full_like(data.labels, -1)  # unnamed classes cannot be matched to the folder's
    base = ImageSet(ids=data.ids, labels=labels, name=data.name, channels=data.channels, size=data.size,
                    images=data.images, decode=data.decode, classes=classes, mean=data.mean, std=data.std,
                    skipped=data.skipped, groups=data.groups)
    ids = [f"{folder.rstrip('/')}/{i}" for i in labelled.ids]
    labelled = ImageSet(ids=ids, labels=labelled.labels, name=labelled.name, channels=labelled.channels,
                        size=labelled.size, images=labelled.images, decode=labelled.decode, classes=classes,
                        skipped=labelled.skipped)
    joined = concat(base, labelled, name=data.name)
    index = torch.arange(len(data), len(joined))
    return joined, LabelledSplit(index, labelled.labels.clone(), classes)


def check_split(split: LabelledSplit) -> None:
    if len(split.index) < split.n_classes:
        raise ReplearnError(
            f"{len(split.index)} labels for {split.n_classes} classes", hint="label at least one image per class"
        )
    if split.n_classes < 2:
        raise ReplearnError("the labels name a single class", hint="a classifier needs at least two classes")


def _classes(names: list[str], known: list[str] | None, source: str) -> tuple[list[int], list[str]]:
    """Names -> indices: into the data's own classes when it has them (sub-folders, built-ins),
    else integers as they are (0..max) or names in sorted order."""
    if known:
        index = {c: i for i, c in enumerate(known)}
        if all(n in index for n in names):
            return [index[n] for n in names], list(known)
        if all(n.isdigit() and int(n) < len(known) for n in names):
            return [int(n) for n in names], list(known)
        bad = next(n for n in names if n not in index)
        raise ReplearnError(f"{source}: label {bad!r} is not a class of the data", hint=f"classes: {', '.join(known)}")
    if all(n.isdigit() for n in names):
        ints = [int(n) for n in names]
        return ints, [str(i) for i in range(max(ints) + 1)]
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return [index[n] for n in names], classes


def _norm(p: str) -> str:
    return p.replace("\\", "/").removeprefix("./")


def write_split(split: LabelledSplit, data: ImageSet, path: Path) -> None:
    """The chosen labelled images as id,label rows (the run folder's ``labels.csv``)."""
    import io

    from replearn.fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label"])
    w.writerows([data.ids[i], split.classes[c]] for i, c in zip(split.index.tolist(), split.labels.tolist(), strict=True))
    atomic_write_text(buf.getvalue(), path)
