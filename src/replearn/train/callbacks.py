"""Callbacks of a pretraining run: kNN monitor, collapse guard, encoder export, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from replearn.data.imageset import ImageSet
from replearn.evaluate.features import extract_features
from replearn.evaluate.knn import knn_accuracy
from replearn.fileio import atomic_torch_save
from replearn.nn.backbones import save_encoder


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temp file, fsync, then rename: an interrupted save leaves the old one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)


class Collapsed(RuntimeError):
    pass


class KNNMonitor(pl.Callback):
    """kNN top-1 (k=20, cosine, T=0.1) of a labelled hold-out against a labelled bank, each epoch."""

    def __init__(self, data: ImageSet, bank: int = 5000, queries: int = 1000, seed: int = 0):
        labelled = torch.nonzero(data.labels >= 0).flatten()
        perm = labelled[torch.randperm(len(labelled), generator=torch.Generator().manual_seed(seed))]
        n_q = min(queries, len(perm) // 5)
        self.query = data.subset(perm[:n_q])
        self.bank = data.subset(perm[n_q : n_q + bank])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if len(self.query) == 0 or trainer.global_rank != 0:
            return
        enc = pl_module.method.backbone
        fb = extract_features(enc, self.bank, device=pl_module.device)
        fq = extract_features(enc, self.query, device=pl_module.device)
        acc = knn_accuracy(fb, self.bank.labels, fq, self.query.labels, k=20, temperature=0.1)
        pl_module.log("knn_monitor", acc, prog_bar=True, rank_zero_only=True)


class CollapseGuard(pl.Callback):
    """Stops the run, before the epoch's checkpoint is written, when the backbone features or the
    embeddings the loss compares have collapsed (their spread, see ``module.spread``, fell below
    the threshold)."""

    WATCHED = {"feature_spread": "backbone features", "embedding_spread": "embeddings the loss compares"}

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for key, what in self.WATCHED.items():
            spread = trainer.callback_metrics.get(key)
            if spread is not None and float(spread) < self.threshold:
                raise Collapsed(
                    f"the embeddings collapsed in epoch {trainer.current_epoch}: the {what} of all images "
                    f"are nearly one point (spread {float(spread):.4f} < {self.threshold})"
                )


class EncoderExport(pl.Callback):
    """Writes ``encoder.pt`` (backbone weights + rebuild spec) and the method's own exports (clip's
    ``text_encoder.pt`` or ``partner_encoder.pt``) at each epoch end."""

    def __init__(self, out: Path, spec: dict):
        self.path, self.spec = Path(out) / "encoder.pt", spec

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            save_encoder(self.path, pl_module.method.backbone, self.spec)
            pl_module.method.export(self.path.parent)


class Pictures(pl.Callback):
    """The method's pictures (reconstructions, samples, latent traversals) of a fixed sample of the
    training images, at each epoch end on rank 0: ``pictures/NAME_epochEEE.png`` and, newest,
    ``NAME.png`` in the run folder (a dict becomes ``NAME.json``)."""

    def __init__(self, out: Path, data: ImageSet, n: int = 10):
        self.out = Path(out)
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].sort().values  # fixed
        self.images, self.mean, self.std = data.batch(pick), data.mean, data.std

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        import json

        from torchvision.utils import save_image

        from replearn.fileio import atomic_write_text

        pics = pl_module.method.pictures(self.images.to(pl_module.device), self.mean, self.std)
        (self.out / "pictures").mkdir(exist_ok=True)
        for name, value in pics.items():
            if isinstance(value, dict):
                atomic_write_text(json.dumps(value, indent=2) + "\n", self.out / f"{name}.json")
                continue
            epoch_file = self.out / "pictures" / f"{name}_epoch{trainer.current_epoch:03d}.png"
            save_image(value.float().cpu(), epoch_file)
            save_image(value.float().cpu(), self.out / f"{name}.png")
