"""The Lightning wrapper around a method: data order, views on the device, optimiser, schedule."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from replearn.data.imageset import ImageSet
from replearn.methods.base import Method
from replearn.schedules import warmup_cosine
from replearn.views import ViewRecipe


class NonFiniteLoss(RuntimeError):
    pass


class IndexedImages(Dataset):
    """Yields whole batches (uint8 images, labels, indices): ``__getitems__`` slices the in-memory
    tensor once per batch instead of collating N single images. With ``resident`` the images
    stay out of the batch (None): the training step takes them from its own copy on the device."""

    def __init__(self, data: ImageSet, resident: bool = False):
        self.data, self.resident = data, resident

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        t = torch.as_tensor(idx, dtype=torch.long)
        return None if self.resident else self.data.batch(t), self.data.labels[t], t


# the uint8 images move to the GPU when they take at most this share of its free memory
RESIDENT_SHARE = 0.25


def resident_images(data: ImageSet, device: torch.device, free_bytes: int | None = None) -> torch.Tensor | None:
    """The data's uint8 images on ``device`` when the step should index them there, else None
    (the DataLoader then brings every batch, from pinned memory on a GPU). In-memory sets are
    resident on a CPU (a view, no copy) and on a GPU when they fit in ``RESIDENT_SHARE`` of its
    free memory; sets decoded lazily from a folder never are."""
    if data.images is None:
        return None
    if device.type == "cpu":
        return data.images
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    if data.images.numel() * data.images.element_size() > RESIDENT_SHARE * free_bytes:
        return None
    return data.images.to(device)


def _passthrough(batch):
    return batch


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, split across processes: the order depends only on
    (seed, epoch), so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, weights=None):
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0
        self.weights = weights  # () -> per-image weights or None, asked at each epoch's start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        w = self.weights() if self.weights is not None else None
        if w is not None:  # e.g. DeepCluster's uniform sampling over pseudo-classes
            perm = torch.multinomial(w.double().cpu(), self.n, replacement=True, generator=g)
        else:
            perm = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world
        return iter(perm[self.rank * per_rank : (self.rank + 1) * per_rank].tolist())

    def __len__(self) -> int:
        return self.n // self.world


class ClassBalancedSampler(Sampler[int]):
    """Batches of P classes x K images (the "PK" batches of Hermans et al., arXiv:1703.07737), so
    every image in a batch has K - 1 positives for a pair, triplet or SupCon loss.

    Each batch draws P distinct classes at random, then the next K images of each class from that
    class's own seeded shuffle (reshuffled when used up, so an image can come twice in a batch only
    where a class has fewer than K images or its shuffle restarts; the two copies get different
    augmentations). An epoch has as many batches as len(labels) // (P * K);
    process ``rank`` of ``world`` takes every world-th batch. The order depends only on (seed,
    epoch), so a resumed run sees the same batches as an uninterrupted one. ``labels`` (N,) int64;
    images labelled -1 are never drawn.
    """

    def __init__(self, labels: torch.Tensor, classes_per_batch: int, images_per_class: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.p, self.k, self.seed, self.rank, self.world, self.epoch = classes_per_batch, images_per_class, seed, rank, world, 0
        labels = torch.as_tensor(labels, dtype=torch.long)
        self.members = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels[labels >= 0]).tolist()]
        if len(self.members) < self.p:
            raise ValueError(f"{len(self.members)} classes cannot fill batches of {self.p} classes")
        self.batches = max(1, int((labels >= 0).sum()) // (self.p * self.k) // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        queues: list[list[int]] = [[] for _ in self.members]  # each class's images still to draw
        out = []
        for b in range(self.batches * self.world):
            for c in torch.randperm(len(self.members), generator=g)[: self.p].tolist():
                while len(queues[c]) < self.k:  # used up: append a fresh shuffle of the class
                    queues[c] += self.members[c][torch.randperm(len(self.members[c]), generator=g)].tolist()
                if b % self.world == self.rank:
                    out += queues[c][: self.k]
                del queues[c][: self.k]
        return iter(out)

    def __len__(self) -> int:
        return self.batches * self.p * self.k


def spread(x: torch.Tensor) -> torch.Tensor:
    """Per-dimension std of the L2-normalised rows of ``x`` (N, D), times sqrt(D): about 1 for
    vectors spread over the sphere, 0 for a batch collapsed to one point."""
    z = F.normalize(x.detach().float(), dim=1)
    return z.std(0).mean() * math.sqrt(z.shape[1])


def current_lr(module: pl.LightningModule) -> float:
    """The learning rate of the first optimiser's first parameter group (the scheduled one: every
    group follows the same schedule), for the metrics.csv column ``lr``."""
    opts = module.optimizers()
    opt = opts[0] if isinstance(opts, list) else opts
    return float(opt.param_groups[0]["lr"])


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Augmentation randomness is a function of (seed, step, rank) alone, so resume is exact."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def param_groups(module: torch.nn.Module, weight_decay: float, exclude: tuple = ()) -> list[dict]:
    """The trainable parameters in two optimiser groups: weights with ``weight_decay``, and BN
    parameters and biases (1-d) without it; parameters in ``exclude`` (another optimiser's) left out."""
    decay, no_decay = [], []
    skip = {id(p) for p in exclude}
    for p in module.parameters():
        if p.requires_grad and id(p) not in skip:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TimedLoop(pl.LightningModule):
    """Times the training loop (data + views + step, epoch-end work excluded) and calls the
    method's ``after_step`` after each optimiser step; subclasses set ``self.method``."""

    def __init__(self):
        super().__init__()
        self.loop_seconds, self._epoch_t0, self._last_batch_end = 0.0, None, None
        self._nonfinite: torch.Tensor | None = None  # steps with a non-finite loss, not yet read back
        self.read_every: int | None = None  # steps between those reads (None: chosen by the device)

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.method.after_step()
        self._last_batch_end = time.perf_counter()
        if batch_idx + 1 == self.trainer.num_training_batches:  # before every epoch-end hook exports
            self._read_nonfinite(self.current_epoch * int(self.trainer.num_training_batches) + batch_idx)

    def on_train_epoch_end(self) -> None:
        if self._epoch_t0 is not None and self._last_batch_end is not None:
            self.loop_seconds += max(0.0, self._last_batch_end - self._epoch_t0)

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        """Stop on a non-finite loss. Reading the loss back is a host-device sync, so the steps'
        verdicts are summed on the device and read every ``read_every`` steps (on a GPU the log
        interval; on a CPU every step, where it costs nothing) and after an epoch's last step,
        before any epoch-end hook exports or checkpoints: what is kept is still the last good epoch."""
        bad = (~torch.isfinite(loss.detach())).int()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad
        if self.read_every is None:
            self.read_every = 1 if loss.device.type == "cpu" else max(1, int(self.trainer.log_every_n_steps))
        if (step + 1) % self.read_every == 0:
            self._read_nonfinite(step, loss)

    def _read_nonfinite(self, step: int, loss: torch.Tensor | None = None) -> None:
        n, self._nonfinite = (0 if self._nonfinite is None else int(self._nonfinite)), None
        if n and self.read_every == 1 and loss is not None:
            raise NonFiniteLoss(f"the loss became {loss.item()} at step {step}")
        if n:
            raise NonFiniteLoss(f"the loss became non-finite in {n} step(s) up to step {step}")


def fused_on(device: torch.device) -> dict:
    """The optimiser's ``fused=True`` on a GPU: one kernel for every parameter's update instead of
    a few per tensor. On a CPU torch's default (foreach) is kept."""
    return {"fused": True} if device.type == "cuda" else {}


def compile_backbone(backbone: torch.nn.Module, device: torch.device) -> bool:
    """``torch.compile`` the backbone's forward in place (its state_dict keys stay as they are,
    so checkpoints and encoder.pt do not change); True when it was set up. On a CPU inductor
    needs a C++ compiler: without one the run stays eager with a one-line note, and any graph
    dynamo cannot compile falls back to eager (``suppress_errors``) instead of stopping the run."""
    import shutil

    import torch._dynamo

    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        print("--compile: no C++ compiler found (inductor needs one on a CPU); training without compile", flush=True)
        return False
    torch._dynamo.config.suppress_errors = True
    backbone.compile(dynamic=False)
    return True


class PretrainModule(TimedLoop):
    def __init__(
        self,
        method: Method,
        recipe: ViewRecipe,
        data: ImageSet,
        image_size: int,
        batch_size: int,
        seed: int,
        optimizer: str,
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        num_workers: int = 0,
        sampler=None,
        compile: bool = False,
    ):
        super().__init__()
        self.method, self.recipe, self.data = method, recipe, data
        self.make_sampler = sampler  # (rank, world) -> a Sampler; default: EpochSampler
        self.image_size, self.batch_size, self.seed = image_size, batch_size, seed
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.warmup_epochs, self.num_workers = warmup_epochs, num_workers
        self.views_seen = 0  # this session's, for the loop's views/s
        # parts with their own optimiser (FactorVAE's critic, InfoGAN's D): Lightning's manual
        # optimisation, one backward of the summed losses, then every optimiser steps its own part
        self.extra = method.extra_optimizers()
        self.automatic_optimization = not self.extra
        self.compile = compile
        self._images: torch.Tensor | None = None  # the data on the device (resident_images)

    def on_fit_start(self) -> None:
        self.method.to(memory_format=torch.channels_last)
        if self.compile:
            compile_backbone(self.method.backbone, self.device)

    def train_dataloader(self) -> DataLoader:
        if self.make_sampler is not None:
            sampler = self.make_sampler(self.global_rank, self.trainer.world_size)
        else:
            sampler = EpochSampler(
                len(self.data), self.seed, self.global_rank, self.trainer.world_size, weights=self.method.sample_weights
            )
        if len(sampler) < self.batch_size:
            from replearn.errors import ReplearnError

            raise ReplearnError(
                f"{len(sampler)} images per process is fewer than one batch of {self.batch_size}",
                "lower --batch-size",
            )
        self._images = resident_images(self.data, self.device)
        return DataLoader(
            IndexedImages(self.data, resident=self._images is not None),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=_passthrough,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available() and self._images is None,
        )

    def step_index(self, batch_idx: int) -> int:
        """Batches trained so far: the global step, except under manual optimisation, where
        Lightning counts every optimiser's step (checkpoints fall on epoch ends, so this resumes)."""
        if self.automatic_optimization:
            return self.global_step
        return self.current_epoch * int(self.trainer.num_training_batches) + batch_idx

    def training_step(self, batch, batch_idx):
        images, _, index = batch
        if images is None:  # resident: gathered on the device, no host-to-device copy
            images = self._images[index.to(self._images.device, non_blocking=True)]
        step = self.step_index(batch_idx)
        g = step_generator(self.seed, step, self.global_rank, images.device)
        epochs = int(self.trainer.max_epochs)
        self.method.set_progress(step, self._total_steps, self.current_epoch, epochs)
        views = self.method.make_views(images, self.recipe, self.image_size, self.data.mean, self.data.std, g)
        self.views_seen += sum(v.shape[0] for v in views)
        # channels_last: oneDNN's and cuDNN's fast layout (CPU, bf16, 2 threads: 3,100 vs 2,460 views/s)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        loss, logs = self.method.training_step(views, index)
        self._check_finite(loss, step)
        if not self.automatic_optimization:
            self._manual_step(loss)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(index))
        self.log("lr", current_lr(self), on_step=True, on_epoch=False, batch_size=len(index))  # the report's curve
        for key, value in logs.items():  # a method's own scalars (loss terms, momentum, temperature)
            if key not in ("features", "embeddings") and (isinstance(value, float | int) or (torch.is_tensor(value) and value.numel() == 1)):
                self.log(key, value.detach().float() if torch.is_tensor(value) else float(value),
                         on_step=False, on_epoch=True, batch_size=len(index))
        # collapse monitor: per-dimension std of normalised vectors, x sqrt(D) so ~1 when spread out,
        # 0 when every image maps to one point; of the backbone features and of the vectors the loss
        # compares (a head can collapse while the backbone keeps some spread: SimSiam without its
        # stop-gradient)
        for key, name in (("features", "feature_spread"), ("embeddings", "embedding_spread")):
            if logs.get(key) is not None:
                self.log(name, spread(logs[key]), on_step=False, on_epoch=True, batch_size=len(index))
        return loss

    def _manual_step(self, loss: torch.Tensor) -> None:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for opt in opts:
            opt.step()
        self.lr_schedulers().step()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # runs before ModelCheckpoint saves, so the checkpoint holds the next epoch's clusters
        if self.method.needs_dataset_features and self.current_epoch + 1 < self.trainer.max_epochs:
            self._refresh_dataset_features(self.current_epoch + 1)

    # -- methods that cluster the whole dataset (DeepCluster, PCL) ----------------------------------
    def on_train_start(self) -> None:
        self._total_steps = int(self.trainer.estimated_stepping_batches)  # once, not in the step
        # a fresh run clusters before epoch 0; a resumed run recomputes what the end of its last
        # epoch computed (same weights, eval mode, seeded k-means), so resume stays exact
        if self.method.needs_dataset_features:
            self._refresh_dataset_features(self.current_epoch)

    @torch.no_grad()
    def _refresh_dataset_features(self, for_epoch: int) -> None:
        """Features of every training image -> ``method.on_dataset_features``, for epoch ``for_epoch``."""
        from replearn.views import eval_view

        was_training = self.method.training
        self.method.eval()
        feats = []
        try:
            for start in range(0, len(self.data), 1024):
                idx = torch.arange(start, min(start + 1024, len(self.data)))
                x = eval_view(self.data.batch(idx).to(self.device), self.data.mean, self.data.std)
                with torch.autocast(self.device.type, enabled=False):
                    feats.append(self.method.dataset_features(x.contiguous(memory_format=torch.channels_last)).float())
        finally:
            self.method.train(was_training)
        self.method.set_progress(self.global_step, self._total_steps, for_epoch, int(self.trainer.max_epochs))
        self.method.on_dataset_features(torch.cat(feats))
        for opt in self.trainer.optimizers:  # nothing to drop yet before the first step
            for p in self.method.fresh_parameters():
                opt.state.pop(p, None)

    def configure_optimizers(self):
        extra_params = [p for part in self.extra for p in part["params"]]
        groups = param_groups(self.method, self.weight_decay, exclude=extra_params)
        lr = self.lr * self.batch_size * self.trainer.world_size / 256
        if self.optimizer_name == "lars":
            from replearn.train.optim import LARS

            groups[1]["lars_exclude"] = True
            opt = LARS(groups, lr=lr, momentum=0.9)
        elif self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, **fused_on(self.device))
        else:
            opt = torch.optim.AdamW(groups, lr=lr, **fused_on(self.device))
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = max(1, int(self.warmup_epochs * steps_per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
        if self.extra:  # their own Adam each, at a constant learning rate (stepped in _manual_step)
            extras = [torch.optim.Adam(part["params"], lr=part["lr"], betas=part.get("betas", (0.9, 0.999)))
                      for part in self.extra]
            return [opt, *extras], [{"scheduler": sched, "interval": "step"}]
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
