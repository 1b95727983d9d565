"""``metric``: train an encoder from class labels with a metric loss, in class-balanced batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from replearn.config import MetricConfig
from replearn.errors import ReplearnError


def metric(config: MetricConfig | None = None, *, resume: bool = False, callbacks=(), **overrides) -> Path:
    """Metric learning on labelled images; returns the run folder.

    ``replearn.metric(data="fashion-mnist", loss="triplet", classes="0-4", out="runs/triplet")``
    trains on classes 0-4 only and records 5-9 as held out, so ``replearn evaluate`` measures
    retrieval on classes the encoder never saw. Each batch holds ``classes_per_batch`` classes x
    ``images_per_class`` images; ``init`` starts the backbone from a self-supervised run. With
    ``resume=True`` the run in ``out`` continues from ``last.ckpt`` with its saved config.
    """
    from replearn.data import load_data
    from replearn.methods.base import MethodOptions
    from replearn.methods.metric import PAIR_LOSSES, MetricLearner
    from replearn.nn import build_backbone
    from replearn.train.module import ClassBalancedSampler
    from replearn.train.run import init_backbone, resolve_config, train_encoder
    from replearn.views import recipe

    cfg = resolve_config(config, resume, overrides, cls=MetricConfig)
    out = Path(cfg.out)
    if not resume and (out / "last.ckpt").exists():
        raise ReplearnError(
            f"{out} already holds a run", f"continue it with --resume, or choose another --out than {out}"
        )
    MetricLearner.check(cfg.loss, cfg.loss_args)  # a typo fails before any data is read
    rec = recipe(cfg.views)
    data = load_data(cfg.data, "train", image_size=cfg.image_size, labels_csv=cfg.labels_csv)
    if cfg.limit:
        data = data.subset(torch.arange(min(cfg.limit, len(data))))
    data, trained, held_out, names = _training_classes(data, cfg.classes, pair_loss=cfg.loss in PAIR_LOSSES)
    if cfg.classes_per_batch > len(trained):
        print(f"note: {len(trained)} classes to train on, so batches hold {len(trained)} classes "
              f"x {cfg.images_per_class} images", flush=True)
        cfg = dataclasses.replace(cfg, classes_per_batch=len(trained))
    size = cfg.image_size or data.size

    pretrained = None
    if cfg.init:  # loaded once, here, so a bad --init fails before anything is written
        pretrained, spec = init_backbone(cfg.init, data, size)
        spec = {k: spec[k] for k in ("backbone", "width", "small_stem", "init") if k in spec}
    else:
        spec = {"backbone": cfg.backbone, "width": cfg.width, "small_stem": cfg.small_stem}
    spec["method"] = f"metric:{cfg.loss}"

    def build():
        if pretrained is not None:
            backbone = pretrained
        else:
            backbone = build_backbone(cfg.backbone, data.channels, size, cfg.width, cfg.small_stem)
        opts = MethodOptions(proj_hidden=cfg.proj_hidden, proj_dim=cfg.proj_dim, args=cfg.loss_args)
        return MetricLearner(backbone, opts, cfg.loss, len(trained))

    def sampler(rank: int, world: int):
        return ClassBalancedSampler(data.labels, cfg.classes_per_batch, cfg.images_per_class, cfg.seed, rank, world)

    meta = {
        "trained_classes": [names[c] for c in trained],
        "held_out_classes": held_out,  # indices into the data's class list: what `evaluate` retrieves on
        "held_out_class_names": [names[c] for c in held_out],
    }
    return train_encoder(cfg, data, rec, build, spec, resume=resume, callbacks=callbacks, meta_extra=meta,
                         sampler=sampler, hint="lower --lr, then retry")


def _training_classes(data, spec: str | None, pair_loss: bool):
    """(data of the trained classes, labels renumbered 0..C-1; trained and held-out class indices in
    the data's own list; that list's names). Images of a class with a single labelled image are left
    out of a pair loss's training (it has no positive) and listed in ``skipped``."""
    from replearn.evaluate.retrieval import parse_classes

    labels = data.labels
    if not data.has_labels:
        raise ReplearnError(
            f"{data.name} has no class labels; metric learning needs them",
            "use a folder of class sub-folders, --labels-csv (rows path,label), or an .npz with a labels array",
        )
    n_classes = len(data.classes) if data.classes else int(labels.max()) + 1
    names = list(data.classes) if data.classes else [str(c) for c in range(n_classes)]
    counts = torch.bincount(labels[labels >= 0], minlength=n_classes)
    wanted = parse_classes(spec, names) if spec else [c for c in range(n_classes) if counts[c] > 0]
    empty = [names[c] for c in wanted if counts[c] == 0]
    if empty:
        raise ReplearnError(f"class {', '.join(empty)} has no labelled image", "leave it out of --classes")
    skipped = list(data.skipped)
    trained = wanted
    if pair_loss:
        lonely = [c for c in wanted if counts[c] == 1]
        for c in lonely:
            i = int(torch.nonzero(labels == c)[0])
            skipped.append((data.ids[i], f"the only image of class {names[c]}: a pair loss needs two per class"))
        if lonely:
            print(f"left out {len(lonely)} class(es) with a single image ({', '.join(names[c] for c in lonely)}): "
                  f"a pair loss needs two images of a class", flush=True)
        trained = [c for c in wanted if counts[c] >= 2]
    if len(trained) < 2:
        raise ReplearnError(
            f"metric learning needs two or more classes{' with two images each' if pair_loss else ''}; "
            f"{len(trained)} to train on",
            "label more images, or choose more --classes",
        )
    held_out = [c for c in range(n_classes) if c not in wanted] if spec else []
    keep = torch.nonzero(torch.isin(labels, torch.tensor(trained))).flatten()
    sub = data.subset(keep)
    remap = torch.full((n_classes,), -1, dtype=torch.long)
    remap[torch.tensor(trained)] = torch.arange(len(trained))
    sub = dataclasses.replace(sub, labels=remap[sub.labels], classes=[names[c] for c in trained], skipped=skipped)
    return sub, trained, held_out, names
