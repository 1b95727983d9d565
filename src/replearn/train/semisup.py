"""``semisup``: a classifier from a few labelled and many unlabelled images, in one call.

Each step takes ``batch_size`` labelled images and ``mu * batch_size`` unlabelled ones (all training
images, labelled ones too, as FixMatch does). The unlabelled order is the pretraining's seeded
per-epoch permutation (an epoch is one pass over the unlabelled images); the labelled batches are
cut from a seeded endless sequence of permutations of the labelled set, a function of the step
alone; views are drawn from a generator seeded by (seed, step, rank). So a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from replearn import __version__
from replearn.config import SemiConfig, save_config
from replearn.data.imageset import ImageSet
from replearn.data.labels import LabelledSplit
from replearn.errors import ReplearnError
from replearn.fileio import atomic_write_text
from replearn.schedules import fixmatch_cosine
from replearn.semisup.base import SemiBatch, SemiMethod, save_classifier
from replearn.train.module import (
    IndexedImages,
    NonFiniteLoss,
    TimedLoop,
    _passthrough,
    current_lr,
    fused_on,
    param_groups,
    resident_images,
    step_generator,
)


def stream_positions(step: int, batch: int, n: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Positions into a set of ``n`` images for one step: the slice [k*B, (k+1)*B), k = step*world + rank,
    of the endless sequence perm_0 | perm_1 | ... where perm_e is a permutation of range(n) seeded
    by (seed, e). Every image is drawn once per pass over the set, in a new order each pass, and the
    draw is a function of the step alone (so a resumed run repeats the uninterrupted one)."""
    start = (step * world + rank) * batch
    pos = torch.arange(start, start + batch)
    out = torch.empty(batch, dtype=torch.long)
    for e in torch.unique(pos // n).tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 104_729 * e + 1))
        sel = pos // n == e
        out[sel] = perm[pos[sel] % n]
    return out


class StepSampler(Sampler[int]):
    """The unlabelled images of ``steps`` consecutive steps from the trainer's current step on:
    ``stream_positions`` of each step. Lightning's epochs only cut this stream into pieces (one
    pass over the images each), so where a resumed run puts its epoch boundaries cannot change
    which images a step sees."""

    def __init__(self, n: int, batch: int, seed: int, rank: int, world: int, steps: int, current_step):
        self.n, self.batch, self.seed, self.rank, self.world, self.steps = n, batch, seed, rank, world, steps
        self.current_step = current_step  # () -> the trainer's global step when an epoch starts

    def __iter__(self):
        s0 = int(self.current_step())
        for s in range(s0, s0 + self.steps):
            yield from stream_positions(s, self.batch, self.n, self.seed + 1, self.rank, self.world).tolist()

    def __len__(self) -> int:
        return self.steps * self.batch


class SemiModule(TimedLoop):
    def __init__(
        self,
        method: SemiMethod,
        data: ImageSet,
        split: LabelledSplit,
        batch_size: int,
        mu: int,
        seed: int,
        optimizer: str,
        lr: float,
        weight_decay: float,
        total_steps: int,
        monitor_truth: bool,
    ):
        super().__init__()
        self.method, self.data, self.split = method, data, split
        self.batch_size, self.mu, self.seed = batch_size, mu, seed
        self.optimizer_name, self.lr, self.weight_decay, self.total_steps = optimizer, lr, weight_decay, total_steps
        self.monitor_truth = monitor_truth  # the data's own labels may score the pseudo-labels
        self.images_seen = 0  # this session's, for the loop's images/s
        self._images: torch.Tensor | None = None  # the data on the device (resident_images)

    def on_fit_start(self) -> None:
        self.method.to(memory_format=torch.channels_last)
        self._x_l = self.data.batch(self.split.index).to(self.device)
        self._y_l = self.split.labels.to(self.device)

    def train_dataloader(self) -> DataLoader:
        n_u, world = self.mu * self.batch_size, self.trainer.world_size
        steps = len(self.data) // (n_u * world)  # an epoch: about one pass over the unlabelled images
        if steps < 1:
            raise ReplearnError(
                f"{len(self.data)} images are fewer than one unlabelled batch of {n_u} (mu x batch size) per process",
                "lower --mu or --batch-size",
            )
        sampler = StepSampler(len(self.data), n_u, self.seed, self.global_rank, world, steps,
                              lambda: self.trainer.global_step)
        self._images = resident_images(self.data, self.device)
        return DataLoader(IndexedImages(self.data, resident=self._images is not None), batch_size=n_u,
                          sampler=sampler, drop_last=True, collate_fn=_passthrough,
                          pin_memory=torch.cuda.is_available() and self._images is None)

    def training_step(self, batch, batch_idx):
        x_u, y_u, u_index = batch
        if x_u is None:  # resident: gathered on the device, no host-to-device copy
            x_u = self._images[u_index.to(self._images.device, non_blocking=True)]
        step = self.global_step
        g = step_generator(self.seed, step, self.global_rank, x_u.device)
        self.method.set_progress(step, self.total_steps)
        if self.method.graph_every and step % self.method.graph_every == 0:
            from replearn.evaluate.features import extract_features

            with torch.no_grad():
                feats = extract_features(self.method.ema.backbone, self.data).float()
            self.method.set_graph_scores(spread_labels(feats, self.split, self.method.graph_k))
        li = stream_positions(step, self.batch_size, len(self.split.index), self.seed, self.global_rank,
                                self.trainer.world_size).to(self.device)
        b = SemiBatch(self._x_l[li], self._y_l[li], x_u, self.data.mean, self.data.std, g, u_index)
        loss, logs = self.method.training_step(b)
        self._check_finite(loss, step)
        self.images_seen += len(x_u) + len(li)
        n = len(x_u)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log("lr", current_lr(self), on_step=True, on_epoch=False, batch_size=n)  # the report's curve
        for key, value in logs.items():
            if key != "pseudo" and (isinstance(value, float | int) or (torch.is_tensor(value) and value.numel() == 1)):
                v = value.detach().float() if torch.is_tensor(value) else float(value)
                self.log(key, v, on_step=False, on_epoch=True, batch_size=n)
        if "pseudo" in logs:
            labels, mask = logs["pseudo"]
            keep = mask > 0
            self.log("pseudo_rate", keep.float().mean(), on_step=False, on_epoch=True, batch_size=n)
            if self.monitor_truth:
                scored = keep & (y_u >= 0)
                if bool(scored.any()):  # how often the kept pseudo-labels are right (a monitor only)
                    acc = (labels[scored] == y_u[scored]).float().mean()
                    self.log("pseudo_acc", acc, prog_bar=True, on_step=False, on_epoch=True,
                             batch_size=int(scored.sum()))
        return loss

    def configure_optimizers(self):
        groups = param_groups(self.method, self.weight_decay)
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, nesterov=True, **fused_on(self.device))
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr, **fused_on(self.device))
        total = self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: fixmatch_cosine(s, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ClassifierExport(pl.Callback):
    """Writes ``classifier.pt`` (the EMA classifier) and ``encoder.pt`` (its backbone) at each epoch's
    end and when training ends, so the last steps of a run cut short of an epoch are kept too."""

    def __init__(self, out: Path, spec: dict, classes: list[str]):
        self.out, self.spec, self.classes = Path(out), spec, classes

    def _save(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            from replearn.nn.backbones import save_encoder

            save_classifier(self.out / "classifier.pt", pl_module.method.ema, self.spec, self.classes)
            save_encoder(self.out / "encoder.pt", pl_module.method.ema.backbone, self.spec)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)


def _labelled_split(cfg: SemiConfig, data: ImageSet) -> tuple[ImageSet, LabelledSplit]:
    """(training data, labelled split): a folder of labelled images joins the data."""
    from replearn.data.labels import check_split, draw_per_class, labelled_folder, read_label_csv

    if cfg.labels and cfg.labels_per_class:
        raise ReplearnError("give --labels or --labels-per-class, not both")
    if cfg.labels and Path(cfg.labels).expanduser().is_dir():
        data, split = labelled_folder(data, cfg.labels)
    elif cfg.labels:
        split = read_label_csv(data, cfg.labels)
    elif cfg.labels_per_class:
        split = draw_per_class(data, cfg.labels_per_class, cfg.seed)
    else:
        raise ReplearnError(
            "no labels given", "add --labels labels.csv (rows path,label) or --labels-per-class N"
        )
    check_split(split)
    return data, split


def spread_labels(feats: torch.Tensor, split: LabelledSplit, k: int = 10) -> torch.Tensor:
    """(N, K) label-spreading scores of every image: the split's labels spread along the ``k``-NN
    graph of the images' features ``feats`` (N, D); k shrinks on a tiny dataset."""
    from replearn.nn.graph import knn_indices, label_spreading

    return label_spreading(knn_indices(feats, min(k, len(feats) - 1)), split.index, split.labels, split.n_classes)


@torch.no_grad()
def probe_head(net, data: ImageSet, split: LabelledSplit, propagate: bool = False, k: int = 10) -> None:
    """Start ``net.head`` as the logistic probe of the benchmark protocol (standardised features,
    C = 0.01) fit on the labelled images' features (evaluation view): the standardisation is
    folded into the linear layer, so the classifier predicts what the probe predicts.

    With ``propagate`` the labels first spread to every image along the ``k``-NN graph of the
    backbone's features (``nn.graph.label_spreading``) and the probe is fit on all the images the
    labels reach, each with its propagated label (the labelled ones keep theirs)."""
    from replearn.evaluate.features import extract_features
    from replearn.evaluate.linear import DEFAULT_C, fit_linear_probe

    if propagate:
        feats_t = extract_features(net.backbone, data).float()
        scores = spread_labels(feats_t, split, k)
        y = scores.argmax(1)
        y[split.index] = split.labels
        reached = scores.sum(1) > 0
        feats, labels = feats_t[reached].double().numpy(), y[reached].numpy()
    else:
        feats = extract_features(net.backbone, data.subset(split.index)).double().numpy()
        labels = split.labels.numpy()
    w, bias = fit_linear_probe(feats, labels, DEFAULT_C).raw_weights()
    net.head.weight.copy_(torch.from_numpy(w).float())
    net.head.bias.copy_(torch.from_numpy(bias).float())


def _backbone(cfg: SemiConfig, data: ImageSet, size: int):
    """(backbone, spec): from the pretraining run ``--init`` when given, else freshly built."""
    from replearn.nn import build_backbone
    from replearn.train.run import init_backbone

    if cfg.init:
        backbone, spec = init_backbone(cfg.init, data, size)
    else:
        backbone = build_backbone(cfg.backbone, data.channels, size, cfg.width, cfg.small_stem)
        spec = {"backbone": cfg.backbone, "width": cfg.width, "small_stem": cfg.small_stem,
                "channels": data.channels, "image_size": size, "out_dim": int(backbone.out_dim)}
    spec.update(mean=list(data.mean), std=list(data.std), data=cfg.data, method=cfg.method,
                replearn_version=__version__)
    return backbone, spec


def semisup(config: SemiConfig | None = None, *, resume: bool = False, callbacks=(), **overrides) -> Path:
    """Train a classifier from a few labels; returns the run folder.

    ``replearn.semisup(data="fashion-mnist", labels_per_class=4, method="fixmatch",
    init="runs/simclr", steps=3000, out="runs/fixmatch")``. With ``resume=True`` the run in
    ``out`` continues from ``last.ckpt`` with its saved config (a larger ``steps`` given here wins).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from replearn.data import load_data
    from replearn.data.labels import write_split
    from replearn.methods.base import parse_args
    from replearn.semisup import SEMI, SemiOptions
    from replearn.train.run import fit, git_commit, resolve_config, write_skipped

    cfg = resolve_config(config, resume, overrides, cls=SemiConfig)
    out = Path(cfg.out)
    if not resume and (out / "last.ckpt").exists():
        raise ReplearnError(f"{out} already holds a run", f"continue it with --resume, or choose another --out than {out}")
    method_cls = SEMI.get(cfg.method)
    parse_args(method_cls.Args, cfg.method_args, cfg.method)  # a typo fails before any data is read
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.mu < 1:
        raise ReplearnError("--steps, --batch-size and --mu must be at least 1")

    data = load_data(cfg.data, "train", image_size=cfg.image_size)
    if cfg.limit:
        data = data.subset(torch.arange(min(cfg.limit, len(data))))
    data, split = _labelled_split(cfg, data)
    size = cfg.image_size or data.size
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the classifier's initial weights
    backbone, spec = _backbone(cfg, data, size)
    out.mkdir(parents=True, exist_ok=True)
    write_skipped(out, data.skipped)
    write_split(split, data, out / "labels.csv")  # the labelled images this run used
    save_config(cfg, out / "config.yaml")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    meta_path = out / "meta.json"
    first = json.loads(meta_path.read_text()) if resume and meta_path.exists() else {}
    meta = {
        "replearn_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
        "started": first.get("started", now), "resumed_at": [*first.get("resumed_at", []), *([now] if resume else [])],
        "images": len(data), "labelled": len(split.index), "classes": split.classes,
        "labelled_per_class": split.per_class().tolist(),
    }
    atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path)

    method = method_cls(backbone, SemiOptions(n_classes=split.n_classes, ema=cfg.ema, args=cfg.method_args))
    method.bind_labels(split.labels, len(data))
    if not resume and (cfg.head_init in ("probe", "propagate") or (cfg.head_init == "auto" and cfg.init)):
        probe_head(method.net, data, split, propagate=cfg.head_init == "propagate")
        method.ema.load_state_dict(method.net.state_dict())
    truth = data.has_labels and list(data.classes or [str(i) for i in range(int(data.labels.max()) + 1)]) == split.classes
    module = SemiModule(method, data, split, cfg.batch_size, cfg.mu, cfg.seed, cfg.optimizer, cfg.lr,
                        cfg.weight_decay, cfg.steps, truth)
    steps_per_epoch = max(1, len(data) // (cfg.mu * cfg.batch_size))
    refresh = 1 if sys.stdout.isatty() else max(1, steps_per_epoch // 10)
    ckpt = ModelCheckpoint(dirpath=out, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False)
    trainer, seconds = fit(
        module, out, cfg, [ClassifierExport(out, spec, split.classes), TQDMProgressBar(refresh_rate=refresh), *callbacks, ckpt],
        resume=resume, stop=(NonFiniteLoss,), hint="lower --lr, then retry",
        max_steps=cfg.steps, max_epochs=-1, log_every_n_steps=min(10, steps_per_epoch),
    )
    if trainer.global_rank == 0:
        meta["train_seconds"] = round(seconds, 1)
        meta["steps"] = int(trainer.global_step)
        meta["images_per_second"] = (
            round(module.images_seen * trainer.world_size / module.loop_seconds, 1) if module.loop_seconds > 0 else None
        )
        atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path)
    return out
