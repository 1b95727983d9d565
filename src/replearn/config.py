"""Typed run options: dataclasses filled from a YAML file and ``--key value`` overrides.

An unknown key or a value of the wrong type is a ``ReplearnError`` naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from replearn.errors import ReplearnError


@dataclass
class PretrainConfig:
    """Self-supervised pretraining of an encoder."""

    data: str = "fashion-mnist"  # built-in name, image folder, or .npy/.npz file
    out: str = "runs/pretrain"  # run folder
    method: str = "simclr"
    method_args: dict[str, Any] = field(default_factory=dict)  # the method's own, e.g. queue_size=4096,momentum=0.99
    backbone: str | None = None  # convnet | flatconv | resnet18 | resnet50 | package.module:function; default: the method's (flatconv for the generative ones, else convnet)
    width: int = 32  # convnet width
    small_stem: bool = True  # resnets: 3x3 stride-1 stem without max-pool, for small images
    image_size: int | None = None  # default: the data's own size (folders: 64)
    views: str | None = None  # view recipe; default: the method's own
    crop_min_scale: float | None = None  # override the recipe's smallest crop area fraction
    epochs: int = 10
    batch_size: int = 256
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = 2e-3  # peak learning rate at batch 256 (scaled linearly with batch size)
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    seed: int = 0
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: str = "auto"  # number of devices or "auto"
    num_nodes: int = 1
    num_workers: int = 0  # DataLoader workers (only for folders decoded lazily)
    compile: bool = False  # torch.compile the backbone (falls back to eager where it cannot compile)
    knn_monitor: bool = True  # kNN accuracy on a labelled hold-out each epoch, when labels exist
    collapse_threshold: float = 0.05  # stop when the spread (std of normalised embeddings * sqrt(dim)) falls below
    limit: int | None = None  # use only the first N images (quick trials)
    labels_csv: str | None = None  # folder labels as a path,label CSV
    groups_csv: str | None = None  # folder group ids as a path,group CSV (the group method's positives)


@dataclass
class SemiConfig:
    """Semi-supervised training of a classifier from a few labels and many unlabelled images."""

    data: str = "fashion-mnist"  # built-in name, image folder, or .npy/.npz file (its train split)
    out: str = "runs/semisup"  # run folder
    method: str = "fixmatch"
    method_args: dict[str, Any] = field(default_factory=dict)  # the method's own, e.g. threshold=0.9
    labels: str | None = None  # labelled images: a CSV (rows path,label) or a folder of class sub-folders
    labels_per_class: int | None = None  # or draw this many labelled images per class from the data's labels
    seed: int = 0  # draws the labels (with labels_per_class) and seeds training
    init: str | None = None  # start the backbone from this pretraining run (or its encoder.pt)
    head_init: Literal["auto", "random", "probe", "propagate"] = "auto"  # probe: the classifier starts as a logistic probe on the labels (auto: with --init); propagate: on the labels spread along the k-NN graph of the features
    backbone: str = "convnet"  # without --init: convnet | resnet18 | resnet50 | package.module:function
    width: int = 32  # convnet width
    small_stem: bool = True
    image_size: int | None = None  # default: the data's own size (folders: 64)
    steps: int = 2000  # optimiser steps in all
    batch_size: int = 64  # labelled images per step
    mu: int = 7  # unlabelled images per labelled one in a step
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd: Nesterov momentum 0.9, as FixMatch
    lr: float = 0.03
    weight_decay: float = 5e-4
    ema: float = 0.999  # momentum of the EMA model that is evaluated and exported
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    limit: int | None = None  # use only the first N images (quick trials)


@dataclass
class MetricConfig:
    """Metric learning of an encoder from class labels, in class-balanced batches (P classes x K images)."""

    data: str = "fashion-mnist"  # built-in name, image folder (class sub-folders), or .npy/.npz file with labels
    out: str = "runs/metric"  # run folder
    loss: Literal["contrastive", "triplet", "supcon", "ranked-list", "arcface", "cosface"] = "supcon"
    loss_args: dict[str, Any] = field(default_factory=dict)  # the loss's own, e.g. margin=0.3,mining=hard
    classes: str | None = None  # train on these classes only, e.g. 0-4 or shirt,coat; the others are held out for retrieval
    init: str | None = None  # start the backbone from this pretraining run (or its encoder.pt)
    backbone: str = "convnet"  # without --init: convnet | resnet18 | resnet50 | package.module:function
    width: int = 32  # convnet width
    small_stem: bool = True
    image_size: int | None = None  # default: the data's own size (folders: 64)
    views: str = "simclr-small"  # the view recipe of each image
    epochs: int = 10
    classes_per_batch: int = 16  # P
    images_per_class: int = 8  # K: batch size P*K
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = 2e-3  # peak learning rate at batch 256 (scaled linearly with batch size)
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    proj_hidden: int = 512
    proj_dim: int = 128  # the embedding the loss sees
    seed: int = 0
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    knn_monitor: bool = True  # kNN accuracy on a hold-out of the training classes, each epoch
    collapse_threshold: float = 0.05
    limit: int | None = None  # use only the first N images (quick trials)
    labels_csv: str | None = None  # folder labels as a path,label CSV

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class


@dataclass
class PredictConfig:
    """Class predictions of a semi-supervised run's classifier for a data source."""

    data: str = "fashion-mnist"  # built-in name, image folder, or .npy/.npz file
    out: str = "predictions.csv"  # rows path,label,confidence
    split: Literal["train", "test"] = "test"  # of a built-in data set (a folder has no split)
    batch_size: int = 512
    limit: int | None = None


@dataclass
class EvaluateConfig:
    """Frozen-encoder evaluation by the benchmark protocol."""

    data: str = "fashion-mnist"
    baseline: Literal["raw", "random"] | None = None  # evaluate raw pixels or a random-init encoder
    backbone: str = "convnet"  # for --baseline random
    width: int = 32
    out: str | None = None  # where eval.json goes (default: the run folder)
    knn_k: int = 200
    knn_temperature: float = 0.1
    few_label: list[int] = field(default_factory=lambda: [4, 25])  # labels per class
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 512
    limit: int | None = None
    labels_csv: str | None = None
    retrieval_classes: str | None = None  # retrieval among the test images of these classes, e.g. 5-9 or sandal,shirt (default: a run's held-out classes)
    prompt: str = "a photo of a {label}"  # a clip run's zero-shot prompt; {label} becomes each class name
    precision: Literal["auto", "32", "bf16"] = "auto"  # of the encoder pass: auto is bf16 where the device computes it natively
    probe: Literal["torch", "sklearn"] = "torch"  # the linear probes' solver: torch's preconditioned L-BFGS on the device, or scikit-learn's


@dataclass
class EmbedConfig:
    """Export embeddings of a data source."""

    data: str = "fashion-mnist"
    out: str = "embeddings.npz"  # .npz or .parquet
    split: Literal["train", "test", "all"] = "train"
    batch_size: int = 512
    limit: int | None = None
    labels_csv: str | None = None
    precision: Literal["auto", "32", "bf16"] = "auto"  # of the encoder pass: auto is bf16 where the device computes it natively


@dataclass
class IndexConfig:
    """Build a cosine-similarity search index (FAISS) of an embeddings file."""

    out: str = "embeddings.index"
    kind: Literal["auto", "exact", "hnsw", "ivf"] = "auto"  # auto: exact up to --exact-max vectors, HNSW above
    exact_max: int = 1_000_000


@dataclass
class SearchConfig:
    """The nearest neighbours of an image (or of an indexed id) in an index."""

    query: str | None = None  # an image file, embedded with the run's encoder
    id: str | None = None  # an id of the indexed set
    k: int = 10
    out: str | None = None  # also write the neighbours as CSV (rank,id,path,similarity)


@dataclass
class DuplicatesConfig:
    """Groups of near-duplicate images: embeddings within a cosine similarity threshold."""

    threshold: float = 0.95  # cosine similarity at or above which two images are duplicates
    out: str = "duplicates.csv"  # rows group,id,path,representative,similarity


@dataclass
class SelectConfig:
    """Choose which images to label: typical-and-diverse, coverage, or random picks."""

    budget: int = 100
    strategy: Literal["typiclust", "kcenter", "random"] = "typiclust"
    exclude: str | None = None  # a CSV of ids already labelled (column id or path)
    out: str = "to_label.csv"  # rows rank,id,path
    seed: int = 0


@dataclass
class ReportConfig:
    """A self-contained HTML report of a run (opens offline)."""

    out: str | None = None  # default: RUN/report.html
    data: str | None = None  # data for the map and neighbour grids (default: the run's own)
    map_points: int = 2000  # images on the 2-D map
    batch_size: int = 512


def fields_of(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _closest(key: str, names) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), list(names), n=1, cutoff=0.5)
    return f"did you mean '{close[0].replace('_', '-')}'?" if close else f"valid keys: {', '.join(sorted(names))}"


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to type ``tp``, or explain why not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for a in args:
            try:
                return coerce(key, value, a)
            except ReplearnError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if value == c or str(value) == str(c):
                return c
        raise ReplearnError(f"{key} must be one of {', '.join(map(str, choices))}, not {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ReplearnError(f"{key} must be a list, not {value!r}", "write e.g. 4,25")
        return [coerce(key, v.strip() if isinstance(v, str) else v, inner) for v in items]
    if origin is dict or tp is dict:
        if isinstance(value, str):  # key=value,key=value from the command line; lists as k=[1,2]
            pairs = [p for p in re.split(r",(?![^\[]*\])", value) if p.strip()]
            if any("=" not in p for p in pairs):
                raise ReplearnError(f"{key} must be key=value pairs, not {value!r}", "write e.g. queue_size=4096,momentum=0.99")
            return {k.strip(): yaml.safe_load(v.strip()) for k, v in (p.split("=", 1) for p in pairs)}
        if not isinstance(value, dict):
            raise ReplearnError(f"{key} must be a mapping of key: value, not {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ReplearnError(f"{key} must be true or false, not {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ReplearnError(f"{key} must be a whole number, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ReplearnError(f"{key} must be a whole number, not {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ReplearnError(f"{key} must be a number, not {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ReplearnError(f"{key} must be a number, not {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ReplearnError(f"{key} must be a string, not {value!r}")
        return str(value)
    raise TypeError(f"unsupported option type {tp!r} for {key}")


def make_config(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Defaults < YAML file < overrides; every key checked against the dataclass."""
    types_ = fields_of(cls)
    values: dict[str, Any] = {}
    if yaml_path is not None:
        p = Path(yaml_path)
        if not p.is_file():
            raise ReplearnError(f"no config file at {p}", "give the path of a YAML file")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ReplearnError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ReplearnError(f"{p} must hold a mapping of option: value")
        values.update(loaded)
    out: dict[str, Any] = {}
    for source in (values, overrides or {}):
        for key, value in source.items():
            name = key.replace("-", "_")
            if name not in types_:
                raise ReplearnError(f"unknown option '{key}'", _closest(name, types_))
            v = coerce(name, value, types_[name])
            # a mapping (method_args) given on the command line adds to the config file's
            out[name] = {**out[name], **v} if isinstance(v, dict) and isinstance(out.get(name), dict) else v
    return cls(**out)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    from replearn.fileio import atomic_write_text

    atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), path)
