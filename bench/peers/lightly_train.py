"""lightly's SimCLR, BYOL and SimSiam, trained under the conditions of replearn's run of that method.

Only the method's implementation comes from lightly (its heads, losses, momentum update and cosine
momentum schedule, used as its examples use them); everything else is replearn's, so the two rows
of ``bench/zoo.py`` differ in the implementation alone:

- the backbone (``replearn.nn.build_backbone``: convnet, width from the config), the data
  (``replearn.data.load_data``), the views (``replearn.views.recipe`` of the config, applied on the
  device to the uint8 batch), the order of the images and the augmentation randomness (replearn's
  ``EpochSampler`` and ``step_generator``), so both see the same batches and the same views;
- epochs, batch size, seed, optimiser (AdamW / SGD / LARS, no weight decay on biases and BN, lr
  scaled by batch / 256), warm-up + cosine schedule, channels_last, bf16 autocast on CUDA (fp32 on
  the CPU);
- the head sizes: the config's ``proj_hidden`` / ``proj_dim`` (SimSiam's predictor bottleneck:
  ``pred_hidden`` or ``proj_dim // 4``) instead of lightly's ImageNet defaults (2048 / 4096 wide),
  which are sized for ResNet-50 features, not the convnet's 256.

What stays lightly's: SimCLRProjectionHead has a BN after its output layer (replearn's has none);
each view goes through the networks in its own forward pass, so BN sees N images (replearn
concatenates the views: 2N); BYOL's loss is lightly's NegativeCosineSimilarity (replearn's is
2 - 2 cos: the same up to scale and shift); its EMA update runs before the step's forward, as
lightly's example does (replearn's runs after the optimiser step: the same sequence of updates),
and averages parameters only (replearn's also copies the BN statistics, unused in train mode).

    python bench/peers/lightly_train.py --method byol --config configs/zoo/byol.yaml --out runs/lightly-byol
    replearn evaluate runs/lightly-byol

It writes ``encoder.pt`` (``replearn.nn.save_encoder``, the spec keys of ``replearn pretrain``) and
``timing.json`` (training seconds and views/s, data loading and model building excluded).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from replearn import __version__
from replearn.config import PretrainConfig, make_config
from replearn.data import load_data
from replearn.nn import build_backbone, save_encoder
from replearn.schedules import warmup_cosine
from replearn.train.module import EpochSampler, step_generator
from replearn.views import recipe


class SimCLR(nn.Module):
    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__()
        self.backbone = backbone
        self.head = SimCLRProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature)

    def loss(self, x0, x1, step, total):
        return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))


class BYOL(nn.Module):
    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__()
        self.backbone = backbone
        self.head = BYOLProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = BYOLPredictionHead(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        self.backbone_momentum, self.head_momentum = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.base_momentum = float(cfg.method_args.get("base_momentum", 0.99))  # replearn BYOL's default
        self.criterion = NegativeCosineSimilarity()

    def loss(self, x0, x1, step, total):
        m = cosine_schedule(step, total, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.head, self.head_momentum, m)
        p0, p1 = (self.predictor(self.head(self.backbone(x))) for x in (x0, x1))
        with torch.no_grad():
            z0, z1 = (self.head_momentum(self.backbone_momentum(x)).detach() for x in (x0, x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class SimSiam(nn.Module):
    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__()
        self.backbone = backbone
        self.head = SimSiamProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        hidden = int(cfg.method_args.get("pred_hidden", 0)) or max(1, cfg.proj_dim // 4)  # as replearn's
        self.predictor = SimSiamPredictionHead(cfg.proj_dim, hidden, cfg.proj_dim)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, x0, x1, step, total):
        z0, z1 = self.head(self.backbone(x0)), self.head(self.backbone(x1))
        p0, p1 = self.predictor(z0), self.predictor(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))


MODELS = {"simclr": SimCLR, "byol": BYOL, "simsiam": SimSiam}


def optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """replearn's: no weight decay on biases and BN, lr scaled by batch / 256."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = cfg.lr * cfg.batch_size / 256
    if cfg.optimizer == "lars":
        from replearn.train.optim import LARS

        groups[1]["lars_exclude"] = True
        return LARS(groups, lr=lr, momentum=0.9)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=lr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=sorted(MODELS))
    p.add_argument("--config", required=True, help="replearn's config of that method")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("limit", args.limit)) if v is not None}
    cfg = make_config(PretrainConfig, Path(args.config), overrides)
    if cfg.method != args.method:
        p.error(f"{args.config} configures {cfg.method}, not {args.method}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, "train", image_size=cfg.image_size)
    if cfg.limit:
        data = data.subset(torch.arange(min(cfg.limit, len(data))))
    size = cfg.image_size or data.size
    images = data.images.to(device)  # uint8, on the device like replearn's batches
    rec = recipe(cfg.views or "simclr", crop_scale=(cfg.crop_min_scale, 1.0) if cfg.crop_min_scale else None)
    backbone = build_backbone(cfg.backbone, data.channels, size, cfg.width, cfg.small_stem)
    model = MODELS[args.method](backbone, cfg).to(device).to(memory_format=torch.channels_last)
    opt = optimizer(model, cfg)
    steps_per_epoch = len(data) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * max(1, steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    sampler = EpochSampler(len(data), cfg.seed)
    cuda = device.type == "cuda"
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if cuda else dict(device_type="cpu", enabled=False)

    model.train()
    step, t0 = 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        losses = []
        for b in range(steps_per_epoch):
            batch = images[order[b * cfg.batch_size : (b + 1) * cfg.batch_size].to(device)]
            g = step_generator(cfg.seed, step, 0, device)
            views = (rec(batch, size, data.mean, data.std, g) for _ in range(2))
            x0, x1 = (v.contiguous(memory_format=torch.channels_last) for v in views)
            with torch.autocast(**amp):
                loss = model.loss(x0, x1, step, total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            step += 1
        mean = torch.stack(losses).mean().item()
        if not math.isfinite(mean):
            print(f"the loss became {mean} in epoch {epoch}", file=sys.stderr)
            return 1
        print(f"epoch {epoch}: loss {mean:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    spec = {
        "backbone": cfg.backbone, "width": cfg.width, "small_stem": cfg.small_stem, "channels": data.channels,
        "image_size": size, "mean": list(data.mean), "std": list(data.std),
        "method": f"lightly-{args.method}", "data": cfg.data, "out_dim": int(backbone.out_dim),
        "replearn_version": __version__,
    }
    save_encoder(out / "encoder.pt", backbone, spec)
    import lightly

    timing = {
        "train_seconds": round(seconds, 2), "views_per_second": round(2 * step * cfg.batch_size / seconds, 1),
        "steps": step, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "lightly_version": lightly.__version__, "torch_version": torch.__version__,
        "config": str(args.config),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(f"trained in {seconds:.1f} s, {timing['views_per_second']:,.0f} views/s; wrote {out}/encoder.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
