"""ImageSet: the one in-memory form every data source is turned into."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images with ids and labels.

    ``images`` is a uint8 tensor (N, C, H, W) when the set is decoded in memory (small sets);
    otherwise it is None and ``decode(i) -> uint8 (C, H, W)`` decodes one item (large folders,
    decoded lazily in DataLoader workers). ``labels`` is int64 (N,), -1 where unknown.
    ``skipped`` lists (path, reason) of inputs that could not be used. ``groups`` is None or int64
    (N,): images with the same id >= 0 show one object or clip (the ``group`` method's positives),
    -1 where unknown. ``captions`` is None or one text per image (the ``clip`` method's pairs).
    ``partners`` is None or uint8 (N, C, H, W), a second image per item with the channels and size
    of ``images`` (the ``clip`` method's image-image pairs); always in memory. ``factors`` is None or
    int64 (N, K): the index of each image's value of each of K known generating factors (the
    ``shapes`` data), named by ``factor_names`` and with ``factor_sizes`` values each (both None or
    K long; indices lie in 0 .. size - 1); what disentanglement is measured against. ``subset``
    keeps the rows of its items; ``concat`` keeps factors only when both sets name and size them
    alike.
    """

    ids: list[str]
    labels: torch.Tensor
    name: str
    channels: int
    size: int
    images: torch.Tensor | None = None
    decode: Callable[[int], torch.Tensor] | None = None
    classes: list[str] | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    groups: torch.Tensor | None = None
    captions: list[str] | None = None
    partners: torch.Tensor | None = None
    factors: torch.Tensor | None = None
    factor_names: list[str] | None = None
    factor_sizes: list[int] | None = None

    def __post_init__(self) -> None:
        if self.images is None and self.decode is None:
            raise ValueError("an ImageSet needs images or a decode function")
        if len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")
        if self.groups is not None and len(self.groups) != len(self.ids):
            raise ValueError("ids and groups differ in length")
        if self.captions is not None and len(self.captions) != len(self.ids):
            raise ValueError("ids and captions differ in length")
        if self.partners is not None and tuple(self.partners.shape) != (len(self.ids), self.channels, self.size, self.size):
            raise ValueError(
                f"partners of shape {tuple(self.partners.shape)} are not {len(self.ids)} "
                f"{self.channels}-channel {self.size}-px images"
            )
        if self.factors is not None and (self.factors.ndim != 2 or len(self.factors) != len(self.ids)):
            raise ValueError(f"factors of shape {tuple(self.factors.shape)} do not give one row per image")
        if self.factors is None and (self.factor_names is not None or self.factor_sizes is not None):
            raise ValueError("factor_names or factor_sizes given without factors")
        if self.factors is not None and self.factor_names is not None and len(self.factor_names) != self.factors.shape[1]:
            raise ValueError("factor_names do not name every factor column")
        if self.factors is not None and self.factor_sizes is not None:
            if len(self.factor_sizes) != self.factors.shape[1]:
                raise ValueError("factor_sizes do not give every factor column a size")
            if len(self.factors) and ((self.factors < 0).any() or (self.factors >= torch.tensor(self.factor_sizes)).any()):
                raise ValueError("a factor index lies outside 0 .. factor_sizes - 1")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def has_groups(self) -> bool:
        return self.groups is not None and bool((self.groups >= 0).any())

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def batch(self, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) for the given indices."""
        if self.images is not None:
            return self.images[torch.as_tensor(index, dtype=torch.long)]
        assert self.decode is not None
        return torch.stack([self.decode(int(i)) for i in index])

    def subset(self, index: Sequence[int] | torch.Tensor) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        if self.images is not None:
            images, decode = self.images[idx], None
        else:
            images, decode = None, _SubsetDecode(self.decode, idx.tolist())
        return ImageSet(
            ids=[self.ids[i] for i in idx.tolist()],
            labels=self.labels[idx],
            name=self.name,
            channels=self.channels,
            size=self.size,
            images=images,
            decode=decode,
            classes=self.classes,
            mean=self.mean,
            std=self.std,
            skipped=self.skipped,
            groups=None if self.groups is None else self.groups[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx.tolist()],
            partners=None if self.partners is None else self.partners[idx],
            factors=None if self.factors is None else self.factors[idx],
            factor_names=self.factor_names,
            factor_sizes=self.factor_sizes,
        )


class _SubsetDecode:
    """decode of a subset; a class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, parent: Callable[[int], torch.Tensor], index: list[int]):
        self.parent, self.index = parent, index

    def __call__(self, i: int) -> torch.Tensor:
        return self.parent(self.index[i])


def concat(first: ImageSet, second: ImageSet, name: str | None = None) -> ImageSet:
    """The images of ``first`` then ``second`` (same channels and size); labels keep their indices
    (the caller aligns the class lists), ids are kept as they are; in memory when both are. Sets of
    image pairs (``partners``) are not joined: there is no partner to give the other set's images.
    Factors are kept only when both sets have them with the same factor_names and factor_sizes;
    otherwise the joined set has none (factors, factor_names and factor_sizes are None)."""
    if first.partners is not None or second.partners is not None:
        raise ValueError("cannot join a set of image pairs (partners) with another set")
    if first.channels != second.channels or first.size != second.size:
        raise ValueError(
            f"cannot join {first.channels}-channel {first.size}-px images with "
            f"{second.channels}-channel {second.size}-px ones"
        )
    if first.images is not None and second.images is not None:
        images, decode = torch.cat([first.images, second.images]), None
    else:
        images, decode = None, _ConcatDecode(first, second)
    groups = None
    if first.groups is not None or second.groups is not None:
        groups = torch.cat([_groups_or_none(first), _groups_or_none(second)])
    captions = None
    if first.captions is not None or second.captions is not None:  # "": no caption
        captions = [*(first.captions or [""] * len(first)), *(second.captions or [""] * len(second))]
    return ImageSet(
        ids=[*first.ids, *second.ids],
        labels=torch.cat([first.labels, second.labels]),
        name=name or first.name,
        channels=first.channels,
        size=first.size,
        images=images,
        decode=decode,
        classes=first.classes,
        mean=first.mean,
        std=first.std,
        skipped=[*first.skipped, *second.skipped],
        groups=groups,
        captions=captions,
        **_joined_factors(first, second),
    )


def _joined_factors(first: ImageSet, second: ImageSet) -> dict:
    same = first.factors is not None and second.factors is not None and first.factor_names == second.factor_names \
        and first.factor_sizes == second.factor_sizes
    if not same:
        return {}
    return {"factors": torch.cat([first.factors, second.factors]), "factor_names": first.factor_names,
            "factor_sizes": first.factor_sizes}


def _groups_or_none(data: ImageSet) -> torch.Tensor:
    return data.groups if data.groups is not None else torch.full((len(data),), -1, dtype=torch.long)


class _ConcatDecode:
    """decode of two joined sets (picklable for DataLoader workers)."""

    def __init__(self, first: ImageSet, second: ImageSet):
        self.first, self.second, self.n = first, second, len(first)

    def __call__(self, i: int) -> torch.Tensor:
        return self.first.batch([i])[0] if i < self.n else self.second.batch([i - self.n])[0]
