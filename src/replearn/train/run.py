"""``pretrain``: one call from a config to a run folder holding checkpoints, encoder and metrics."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch

from replearn import __version__
from replearn.config import PretrainConfig, make_config, save_config, to_dict
from replearn.errors import ReplearnError
from replearn.fileio import atomic_write_text


def git_commit() -> str | None:
    """``$REPLEARN_GIT_COMMIT`` when set (by whoever copied the tree elsewhere without its history,
    e.g. onto a GPU machine), else the commit of the replearn source tree when it is a git checkout."""
    if os.environ.get("REPLEARN_GIT_COMMIT"):
        return os.environ["REPLEARN_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def init_backbone(init: str, data, size: int):
    """(backbone in train mode, its spec) from the pretraining run (or encoder.pt) ``init``, checked
    against the data's channels and image size."""
    from replearn.nn import load_encoder

    backbone, spec = load_encoder(init)
    if spec["channels"] != data.channels or spec["image_size"] != size:
        raise ReplearnError(
            f"the encoder in {init} takes {spec['channels']}-channel {spec['image_size']}-px images, "
            f"the data has {data.channels}-channel {size}-px ones",
            f"pretrain on this data first, or pass --image-size {spec['image_size']}",
        )
    backbone.train()
    return backbone, {**spec, "init": str(init)}


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast where the hardware computes bf16 natively (CUDA bf16; CPU AMX or
    AVX512-BF16, where it measured about 2x fp32 for the convnet), else fp32."""
    if precision == "32":
        return "32-true"
    if precision in ("bf16", "16"):
        return f"{precision}-mixed"
    from replearn.dist import native_bf16

    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if native_bf16("cuda") else "16-mixed"
    return "bf16-mixed" if native_bf16("cpu") else "32-true"


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        _write_csv(out / "skipped.csv", ["path", "reason"], [{"path": p, "reason": r} for p, r in skipped])


def merge_metrics(out: Path) -> None:
    """Lightning's CSV logger starts metrics.csv afresh; put the rows of earlier sessions back first."""
    prev, cur = out / "metrics.prev.csv", out / "metrics.csv"
    if not prev.exists():
        return
    rows = [*csv.DictReader(prev.open())] + ([*csv.DictReader(cur.open())] if cur.exists() else [])
    _write_csv(cur, sorted({k for r in rows for k in r}), rows)
    prev.unlink()


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_config(config, resume: bool, overrides: dict, cls=PretrainConfig):
    """The run's config: ``config`` (or the defaults of ``cls``) plus ``overrides``; with ``resume``,
    the config saved in the run folder plus what this call changes."""
    if resume:
        out = Path(overrides.get("out") or (config.out if config else cls.out))
        saved = out / "config.yaml"
        if not (out / "last.ckpt").exists() or not saved.exists():
            raise ReplearnError(f"nothing to resume in {out}: no last.ckpt", "check --out, or start without --resume")
        # the saved config, then what this call changes (a config's non-defaults, then overrides),
        # all through make_config so a command-line string such as "20" is checked and converted
        changed = {k: v for k, v in (to_dict(config) if config else {}).items() if v != getattr(cls(), k)}
        return make_config(cls, saved, {**changed, **overrides})
    cfg = config or cls()
    return make_config(cls, None, {**to_dict(cfg), **overrides})


def fit(module, out: Path, cfg, callbacks: list, *, resume: bool, stop: tuple, hint: str, **limits):
    """Train ``module`` with Lightning's Trainer on ``cfg``'s devices and precision, logging to
    ``out/metrics.csv`` (earlier sessions' rows kept) and checkpointing ``out/last.ckpt`` through
    the callbacks given; ``limits`` are the Trainer's ``max_epochs``/``max_steps`` and
    ``log_every_n_steps``. An exception of ``stop`` becomes a one-line error naming the last good
    checkpoint, with ``hint``; Ctrl-C stays a KeyboardInterrupt. Returns the trainer and the seconds
    the fit took."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from replearn.train.callbacks import AtomicCheckpointIO

    devices = cfg.devices if cfg.devices == "auto" else int(cfg.devices)
    if (out / "metrics.csv").exists() and not (out / "metrics.prev.csv").exists():
        os.replace(out / "metrics.csv", out / "metrics.prev.csv")
    quiet_lightning()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|GPU available|LeafSpec|Experiment logs directory|smaller than the logging interval|Checkpoint directory .* exists and is not empty).*")
        trainer = pl.Trainer(
            accelerator=cfg.accelerator,
            devices=devices,
            num_nodes=cfg.num_nodes,
            precision=resolve_precision(cfg.precision, cfg.accelerator),
            logger=CSVLogger(save_dir=str(out), name="", version=""),
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            benchmark=True,  # cuDNN picks each conv's fastest kernel once per shape (a no-op on a CPU)
            default_root_dir=str(out),
            **limits,
        )
        t0 = time.perf_counter()
        try:
            trainer.fit(module, ckpt_path=str(out / "last.ckpt") if resume else None)
        except SystemExit:
            if trainer.interrupted:  # Lightning turns Ctrl-C into exit(1) after a graceful shutdown
                raise KeyboardInterrupt from None
            raise
        except stop as e:
            kept = out / "last.ckpt"
            where = f"the last good checkpoint is {kept}" if kept.exists() else "no epoch had finished, so no checkpoint"
            raise ReplearnError(f"{e}; {where}", hint) from None
        finally:
            merge_metrics(out)
    return trainer, time.perf_counter() - t0


def pretrain(config: PretrainConfig | None = None, *, resume: bool = False, callbacks=(), **overrides) -> Path:
    """Pretrain an encoder without labels; returns the run folder.

    ``replearn.pretrain(data="fashion-mnist", method="simclr", epochs=3, out="runs/simclr")``.
    With ``resume=True`` the run in ``out`` continues from ``last.ckpt`` with its saved config
    (options given here, such as a larger ``epochs``, override it).
    """
    from replearn.data import load_data
    from replearn.methods import METHODS, MethodOptions
    from replearn.methods.base import parse_args
    from replearn.nn import build_backbone
    from replearn.views import recipe

    cfg = resolve_config(config, resume, overrides)
    out = Path(cfg.out)
    if not resume and (out / "last.ckpt").exists():
        raise ReplearnError(
            f"{out} already holds a run", f"continue it with --resume, or choose another --out than {out}"
        )
    method_cls = METHODS.get(cfg.method)
    parse_args(method_cls.Args, cfg.method_args, cfg.method)  # a typo fails before any data is read
    rec = recipe(cfg.views or method_cls.views, crop_scale=(cfg.crop_min_scale, 1.0) if cfg.crop_min_scale else None)

    data = load_data(
        cfg.data, "train", image_size=cfg.image_size, labels_csv=cfg.labels_csv, groups_csv=cfg.groups_csv
    )
    if cfg.limit:
        data = data.subset(torch.arange(min(cfg.limit, len(data))))
    size = cfg.image_size or data.size
    backbone_name = cfg.backbone or method_cls.default_backbone

    def build():
        backbone = build_backbone(backbone_name, data.channels, size, cfg.width, cfg.small_stem)
        opts = MethodOptions(temperature=cfg.temperature, proj_hidden=cfg.proj_hidden, proj_dim=cfg.proj_dim,
                             args=cfg.method_args, channels=data.channels, image_size=size, width=cfg.width)
        return method_cls(backbone, opts)

    spec = {"backbone": backbone_name, "width": cfg.width, "small_stem": cfg.small_stem, "method": cfg.method}
    return train_encoder(cfg, data, rec, build, spec, resume=resume, callbacks=callbacks)


def train_encoder(cfg, data, rec, build_method, spec: dict, *, resume: bool, callbacks=(), meta_extra=None,
                  sampler=None, hint="lower --lr, raise --temperature or --batch-size, then retry") -> Path:
    """The training shared by ``pretrain`` and ``metric``: writes the run folder ``cfg.out`` (config,
    meta.json, skipped.csv), seeds, builds the method with ``build_method()`` (after seeding, so its
    initial weights follow ``cfg.seed``), trains it with Lightning and exports ``encoder.pt`` (the
    backbone, with ``spec`` plus the data's shape and normalisation). ``sampler``: (rank, world) ->
    the batches' Sampler, default a seeded permutation per epoch."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from replearn.methods.base import Method
    from replearn.train.callbacks import Collapsed, CollapseGuard, EncoderExport, KNNMonitor, Pictures
    from replearn.train.module import NonFiniteLoss, PretrainModule

    out = Path(cfg.out)
    size = cfg.image_size or data.size
    out.mkdir(parents=True, exist_ok=True)
    write_skipped(out, data.skipped)
    if data.skipped:
        print(f"skipped {len(data.skipped)} image(s); the list and the reasons are in {out / 'skipped.csv'}")
    save_config(cfg, out / "config.yaml")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    meta_path = out / "meta.json"
    first = json.loads(meta_path.read_text()) if resume and meta_path.exists() else {}
    meta = {
        "replearn_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "started": first.get("started", now),
        "resumed_at": [*first.get("resumed_at", []), *([now] if resume else [])],
        "images": len(data),
        "skipped": len(data.skipped),
        **(meta_extra or {}),
    }
    atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    method = build_method()
    method.bind_data(data)
    module = PretrainModule(
        method, rec, data, size, cfg.batch_size, cfg.seed, cfg.optimizer, cfg.lr, cfg.weight_decay,
        cfg.warmup_epochs, cfg.num_workers, sampler=sampler, compile=getattr(cfg, "compile", False),
    )
    spec = {
        **spec, **method.encoder_spec(), "channels": data.channels, "image_size": size, "mean": list(data.mean), "std": list(data.std),
        "data": cfg.data, "out_dim": int(method.backbone.out_dim), "replearn_version": __version__,
    }
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    # a terminal gets a live bar; a log file (CI, nohup) gets about ten lines an epoch
    refresh = 1 if sys.stdout.isatty() else max(1, steps_per_epoch // 10)
    if cfg.accelerator != "cpu" and torch.cuda.is_available():
        refresh = max(refresh, 25)  # each refresh reads the loss back from the GPU: a sync
    cbs = [EncoderExport(out, spec), CollapseGuard(cfg.collapse_threshold), TQDMProgressBar(refresh_rate=refresh)]
    if cfg.knn_monitor and data.has_labels:
        cbs.insert(0, KNNMonitor(data, seed=cfg.seed))
    if type(method).pictures is not Method.pictures:  # the generative methods draw what they learnt
        cbs.append(Pictures(out, data))
    # one file, overwritten (atomically) at each epoch end
    ckpt = ModelCheckpoint(dirpath=out, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False)
    trainer, seconds = fit(
        module, out, cfg, [*cbs, *callbacks, ckpt], resume=resume, stop=(NonFiniteLoss, Collapsed),
        hint=hint, max_epochs=cfg.epochs, log_every_n_steps=min(10, steps_per_epoch),
    )
    if trainer.global_rank == 0:
        # this session's figures (a resumed run reports the part it trained)
        views = module.views_seen * trainer.world_size
        meta["train_seconds"] = round(seconds, 1)
        meta["views_per_second"] = round(views / module.loop_seconds, 1) if module.loop_seconds > 0 else None
        meta["views"] = views
        atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path)
    return out
