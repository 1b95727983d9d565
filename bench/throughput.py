"""Training-loop throughput: augmented views per second of replearn's methods, against lightly's
implementation of each method lightly 1.6.0 also has (SimCLR, MoCo, BYOL, SwAV, SimSiam, Barlow
Twins, VICReg, DINO), and of the zoo's other methods alone (PIRL, DeepCluster, PCL, RotNet, Jigsaw,
CPC, Group, the generative methods), with the share of the machine's matmul peak each one reaches.

For each method both contenders run the whole loop (data, augmentation, forward, backward, optimiser
step, momentum update) on the same Fashion-MNIST images, the same backbone (``convnet``, width 32),
the same heads (512 -> 128 where the method has a projector) and loss settings, AdamW at 2e-3 and
batch 256, with the same number of torch threads. Each contender runs in its own subprocess, so its
peak memory is its own.

    .venv/bin/python bench/throughput.py                       # ~30 steady steps per contender
    .venv/bin/python bench/throughput.py --quick               # smoke check, a few steps
    .venv/bin/python bench/throughput.py --methods paired      # the methods lightly also has
    .venv/bin/python bench/throughput.py --methods replearn-only --save runs/throughput.json
    .venv/bin/python bench/throughput.py --write docs/benchmarks.md
    .venv/bin/python bench/throughput.py --profile simclr/replearn-fp32   # top ops of one steady step

replearn runs the real user path, ``replearn.train.run.pretrain``, with a callback that stamps
``time.perf_counter()`` at every batch start and end. lightly runs the loop of its documentation:
a torch Dataset of PIL images with its transform (``SimCLRTransform``, ``SimSiamTransform``,
``BYOLTransform`` for Barlow Twins, ``VICRegTransform``, ``SwaVTransform`` / ``DINOTransform`` for
multi-crop), a DataLoader, one forward pass per view and lightly's loss and momentum helpers.
Views per step = views per image x batch, where every input the backbone sees counts (SwAV's and
DINO's small crops, Jigsaw's and PIRL's tiles, CPC's patches). The first ``--warmup`` steps are
skipped; the steady steps are split into ``--repeats`` consecutive windows, and views/s is reported
as the mean over windows with the min-max range.

FLOP floor: before the contenders, one more subprocess counts with
``torch.utils.flop_counter.FlopCounterMode`` (fp32, on the CPU, outside any timed loop) the FLOPs of
one replearn training step of each method (forward + backward of ``training_step`` on a batch) and
of the backbone alone on the same views (forward + backward), and measures the machine's peak
matmul rate (``torch.mm`` of 2048 x 2048 matrices, fp32 and bf16, best of 5, same thread count).
Each row then gets its achieved backbone FLOP/s = views/s x backbone FLOPs per view, and that as a
share of the fp32 and of the bf16 peak. A split run merges its rows into one ``--save`` file, and
``--write`` renders every row saved there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- throughput:start -->", "<!-- throughput:end -->"


class Bench(NamedTuple):
    """One method of the bench: replearn's method arguments, pretrain options besides the shared
    ones (``temperature`` also sets lightly's loss), the views per image (every input the backbone
    sees counts), and whether lightly 1.6.0 implements it (then it runs beside replearn)."""

    margs: dict
    extra: dict
    views: int
    lightly: bool


# the methods measured, in table order; the replearn-only ones take their zoo config's method
# arguments (configs/zoo/NAME.yaml), but every row has the same backbone, heads, lr and batch
BENCH_METHODS = {
    "simclr": Bench({}, {}, 2, True),
    "moco": Bench({"queue_size": 8192, "momentum": 0.99}, {}, 2, True),
    "byol": Bench({"base_momentum": 0.99}, {}, 2, True),
    # 2 large (28 px) + 4 small (12 px) crops; every crop counts as a view
    "swav": Bench({"n_prototypes": 100, "n_small": 4, "small_size": 12}, {"temperature": 0.1}, 6, True),
    "simsiam": Bench({}, {}, 2, True),  # predictor bottleneck proj_dim / 4, as the paper's 2048 -> 512
    "barlow": Bench({"lambd": 0.0051}, {}, 2, True),
    "vicreg": Bench({"sim_w": 25.0, "var_w": 25.0, "cov_w": 1.0}, {}, 2, True),
    # the zoo's DINO: 2 x 28 px + 4 x 12 px crops, 2048-way last layer, temperatures and momentum
    "dino": Bench({"out_dim": 2048, "n_small": 4, "small_size": 12, "momentum": 0.99, "teacher_temp": 0.06,
                   "teacher_temp_epochs": 3}, {}, 6, True),
    # the image view and the 9 tiles of a second view
    "pirl": Bench({"n_negatives": 16384, "lam": 0.5, "bank_momentum": 0.5, "loss": "infonce"},
                  {"temperature": 0.1}, 10, False),
    "deepcluster": Bench({"n_clusters": 200, "pca_dim": 128, "kmeans_iters": 20}, {}, 2, False),
    # warmup_epochs 0: the ProtoNCE term from the first step (the zoo's 1 would leave a 1-epoch run MoCo)
    "pcl": Bench({"n_clusters": [50, 100, 200], "warmup_epochs": 0, "queue_size": 4096, "momentum": 0.99},
                 {}, 2, False),
    "rotation": Bench({}, {"crop_min_scale": 0.5}, 4, False),  # all four rotations of one view
    "jigsaw": Bench({"n_permutations": 100, "tile_scale": 1.5, "gap_frac": 0.15}, {"crop_min_scale": 0.5}, 9, False),
    # the whole image and its 5 x 5 patches
    "cpc": Bench({"grid": 5, "steps": 3, "directions": 4, "patch_crop_min": 0.6, "full_image_bn": True},
                 {"crop_min_scale": 0.5}, 26, False),
    "group": Bench({}, {}, 2, False),  # no group ids in Fashion-MNIST: instance groups
    # the generative methods: one un-augmented view; here on convnet (their zoo configs use flatconv)
    "vae": Bench({"latent_dim": 32}, {}, 1, False),
    "betavae": Bench({"latent_dim": 32, "beta": 4.0}, {}, 1, False),
    "factorvae": Bench({"latent_dim": 32, "gamma": 20.0}, {}, 1, False),
    "infogan": Bench({"noise_dim": 62, "categories": 10, "continuous": 4}, {}, 1, False),
    "ladder": Bench({"levels": 3, "latent_per_level": 10}, {}, 1, False),
}
# registered methods this bench cannot run, and why (the report lists them)
LEFT_OUT = {
    "clip": "needs captions or image pairs, which Fashion-MNIST lacks",
}
LEFT_OUT_TEXT = (
    "clip (needs captions or image pairs, which Fashion-MNIST lacks); the metric-learning losses "
    "(supcon, triplet, contrastive, ranked-list, arcface, cosface: `replearn metric`, not pretrain, they need class "
    "labels and class-balanced batches) and the semi-supervised methods (they need labels)"
)
METHOD_GROUPS = {
    "all": list(BENCH_METHODS),
    "paired": [m for m, b in BENCH_METHODS.items() if b.lightly],
    "replearn-only": [m for m, b in BENCH_METHODS.items() if not b.lightly],
}
SETTINGS = {"replearn-fp32": ("replearn", "32"), "replearn-bf16": ("replearn", "bf16"),
            "lightly-w0": ("lightly", "0"), "lightly-w2": ("lightly", "2")}
# "method/contender" -> (framework, setting, method); the setting is the precision for replearn,
# num_workers for lightly; methods lightly lacks have replearn's contenders only
CONTENDERS = {f"{m}/{c}": (*fs, m) for m, b in BENCH_METHODS.items() for c, fs in SETTINGS.items()
              if b.lightly or fs[0] == "replearn"}
BACKBONE, WIDTH, PROJ_HIDDEN, PROJ_DIM, TEMPERATURE, LR, WEIGHT_DECAY = "convnet", 32, 512, 128, 0.2, 2e-3, 1e-4
MM_SIZE, MM_REPEATS = 2048, 5  # the peak matmul: torch.mm of two MM_SIZE x MM_SIZE matrices, best of MM_REPEATS


# --------------------------------------------------------------------------- child: one contender


def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


class _Profile:
    """Profiles one whole loop iteration (end of step k -> end of step k+1) and prints its top ops."""

    def __init__(self, at: int, rows: int = 30):
        self.at, self.rows, self.prof = at, rows, None

    def step_end(self, i: int) -> None:
        import torch.profiler as tp

        if i == self.at - 1:
            self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU])
            self.prof.start()
        elif i == self.at and self.prof is not None:
            self.prof.stop()
            table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.rows)
            print(table, file=sys.stderr, flush=True)
            self.prof = None


def _options(method: str) -> dict:
    """replearn's pretrain options of ``method`` besides data, backbone, heads and method arguments."""
    return dict(temperature=TEMPERATURE, lr=LR, weight_decay=WEIGHT_DECAY, optimizer="adamw") | BENCH_METHODS[method].extra


def _run_replearn(precision: str, a, method: str) -> dict:
    import lightning.pytorch as pl
    import torch

    from replearn.train.run import pretrain, resolve_precision

    stamps: dict[str, list[float]] = {"start": [], "end": []}
    threads_seen: list[int] = []
    prof = _Profile(a.warmup) if a.profile else None

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not threads_seen:
                threads_seen.append(torch.get_num_threads())
            stamps["start"].append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            stamps["end"].append(time.perf_counter())
            if prof is not None:
                prof.step_end(batch_idx)

    n_steps = a.warmup + a.steps
    with tempfile.TemporaryDirectory(prefix="replearn-bench-") as tmp:
        pretrain(
            data="fashion-mnist", method=method, backbone=BACKBONE, width=WIDTH, batch_size=a.batch_size,
            epochs=1, limit=n_steps * a.batch_size, out=str(Path(tmp) / "run"), knn_monitor=False,
            precision=precision, callbacks=[Timer()], proj_hidden=PROJ_HIDDEN, proj_dim=PROJ_DIM,
            method_args=BENCH_METHODS[method].margs, **_options(method),
        )
    return {
        **stamps,
        "threads": threads_seen[0] if threads_seen else torch.get_num_threads(),
        "precision": resolve_precision(precision, "auto"),
        "auto_precision": resolve_precision("auto", "auto"),
    }


class _PILImages:
    """The images as PIL grayscale images, converted per item, as torchvision's FashionMNIST does."""

    def __init__(self, images, transform):
        self.images, self.transform = images.numpy(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i, 0])), 0  # 2-d uint8 -> mode "L"


def _lightly_model(method: str, data, steps: int, backbone_name: str = BACKBONE):
    """lightly's parts for ``method`` (its documented example loop), on replearn's backbone:
    returns (model, step(views, i) -> loss). Heads and loss settings are replearn's (its method
    arguments, read from its ``Args`` with the bench's values, so the defaults are replearn's too)."""
    import copy

    import torch
    from lightly.loss import (
        BarlowTwinsLoss,
        DINOLoss,
        NegativeCosineSimilarity,
        NTXentLoss,
        SwaVLoss,
        VICRegLoss,
    )
    from lightly.models.modules import (
        BarlowTwinsProjectionHead,
        BYOLPredictionHead,
        BYOLProjectionHead,
        DINOProjectionHead,
        MoCoProjectionHead,
        SimCLRProjectionHead,
        SimSiamPredictionHead,
        SimSiamProjectionHead,
        SwaVProjectionHead,
        SwaVPrototypes,
    )
    from lightly.models.modules.heads import VICRegProjectionHead  # not re-exported by lightly.models.modules
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn

    from replearn.methods import METHODS
    from replearn.methods.base import parse_args
    from replearn.nn import build_backbone

    backbone = build_backbone(backbone_name, in_channels=data.channels, image_size=data.size, width=WIDTH)
    d = backbone.out_dim
    spec = BENCH_METHODS[method]
    margs, extra = spec.margs, spec.extra
    args = parse_args(METHODS.get(method).Args, margs, method)

    def momentum_pair(m):
        update_momentum(model["backbone"], target["backbone"], m)
        update_momentum(model["head"], target["head"], m)

    target = None
    if method == "simclr":
        model = nn.ModuleDict({"backbone": backbone, "head": SimCLRProjectionHead(d, PROJ_HIDDEN, PROJ_DIM)})
        crit = NTXentLoss(temperature=TEMPERATURE)

        def step(views, i):
            z0, z1 = (model["head"](model["backbone"](x)) for x in views)
            return crit(z0, z1)
    elif method in ("moco", "byol"):
        if method == "moco":
            head = MoCoProjectionHead(d, PROJ_HIDDEN, PROJ_DIM)  # Linear-ReLU-Linear, as replearn's MoCo v2 head
            model = nn.ModuleDict({"backbone": backbone, "head": head})
            crit = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=(margs["queue_size"], PROJ_DIM))
        else:
            model = nn.ModuleDict({"backbone": backbone, "head": BYOLProjectionHead(d, PROJ_HIDDEN, PROJ_DIM),
                                   "pred": BYOLPredictionHead(PROJ_DIM, PROJ_HIDDEN, PROJ_DIM)})
            crit = NegativeCosineSimilarity()
        target = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": copy.deepcopy(model["head"])})
        deactivate_requires_grad(target)

        def step(views, i):
            m = margs["momentum"] if method == "moco" else cosine_schedule(i, steps, margs["base_momentum"], 1.0)
            momentum_pair(m)
            q = [model["head"](model["backbone"](x)) for x in views]
            if method == "byol":
                q = [model["pred"](z) for z in q]
            with torch.no_grad():
                k = [target["head"](target["backbone"](x)) for x in views]
            return 0.5 * (crit(q[0], k[1]) + crit(q[1], k[0]))  # symmetric, as replearn's
    elif method == "swav":
        model = nn.ModuleDict({"backbone": backbone, "head": SwaVProjectionHead(d, PROJ_HIDDEN, PROJ_DIM),
                               "prototypes": SwaVPrototypes(PROJ_DIM, margs["n_prototypes"])})
        crit = SwaVLoss(temperature=extra["temperature"], sinkhorn_epsilon=0.05, sinkhorn_iterations=3)

        def step(views, i):
            model["prototypes"].normalize()
            feats = [nn.functional.normalize(model["head"](model["backbone"](x)), dim=1) for x in views]
            scores = [model["prototypes"](f, i) for f in feats]
            return crit(scores[:2], scores[2:])
    elif method == "simsiam":
        # projector: 3 layers with BN on each, the last without affine; predictor bottleneck proj_dim / 4
        model = nn.ModuleDict({"backbone": backbone, "head": SimSiamProjectionHead(d, PROJ_HIDDEN, PROJ_DIM),
                               "pred": SimSiamPredictionHead(PROJ_DIM, args.pred_hidden or max(1, PROJ_DIM // 4),
                                                             PROJ_DIM)})
        crit = NegativeCosineSimilarity()

        def step(views, i):
            z = [model["head"](model["backbone"](x)) for x in views]
            p = [model["pred"](zi) for zi in z]
            return 0.5 * (crit(p[0], z[1].detach()) + crit(p[1], z[0].detach()))
    elif method in ("barlow", "vicreg"):
        if method == "barlow":  # Linear-BN-ReLU x 2 -> Linear, as replearn's mlp
            head = BarlowTwinsProjectionHead(d, PROJ_HIDDEN, PROJ_DIM)
            crit = BarlowTwinsLoss(lambda_param=args.lambd)
        else:
            head = VICRegProjectionHead(d, PROJ_HIDDEN, PROJ_DIM, num_layers=3)
            crit = VICRegLoss(lambda_param=args.sim_w, mu_param=args.var_w, nu_param=args.cov_w)
        model = nn.ModuleDict({"backbone": backbone, "head": head})

        def step(views, i):
            z0, z1 = (model["head"](model["backbone"](x)) for x in views)
            return crit(z0, z1)
    elif method == "dino":
        def head():
            # replearn's head: 3-layer MLP with BN and ReLU -> bottleneck -> L2 norm -> weight-normalised
            # last layer; lightly's has GELU, swapped for ReLU here so both heads compute the same
            h = DINOProjectionHead(d, PROJ_HIDDEN, PROJ_DIM, args.out_dim, batch_norm=True)
            for k, layer in enumerate(h.layers):
                if isinstance(layer, nn.GELU):
                    h.layers[k] = nn.ReLU()
            return h

        model = nn.ModuleDict({"backbone": backbone, "head": head()})
        # lightly's example makes the teacher head afresh (weight norm's hooks do not deep-copy)
        target = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": head()})
        target["head"].load_state_dict(model["head"].state_dict())
        deactivate_requires_grad(target)
        crit = DINOLoss(output_dim=args.out_dim, warmup_teacher_temp=args.warmup_teacher_temp,
                        teacher_temp=args.teacher_temp, student_temp=args.student_temp,
                        center_momentum=args.center_momentum)

        def step(views, i):
            momentum_pair(cosine_schedule(i, steps, args.momentum, 1.0))
            with torch.no_grad():  # the teacher sees the two large crops
                t = [target["head"](target["backbone"](x)) for x in views[:2]]
            s = [model["head"](model["backbone"](x)) for x in views]
            # replearn's schedule: linear warm-up over teacher_temp_epochs (this run is one epoch)
            ramp = min(1.0, (i / steps) / args.teacher_temp_epochs) if args.teacher_temp_epochs > 0 else 1.0
            tt = args.warmup_teacher_temp + (args.teacher_temp - args.warmup_teacher_temp) * ramp
            return crit(t, s, teacher_temp=tt)
    else:
        raise ValueError(f"lightly has no {method} in this bench")
    return model, step


def _lightly_transform(method: str, data):
    """lightly's transform for ``method`` with replearn's "simclr" recipe: crop (0.08, 1), flip 0.5,
    jitter p 0.8 (0.4, 0.4, 0.2, 0.1), gray 0.2, blur p 0.5 sigma (0.1, 2), no solarisation,
    normalised with the data's own 1-channel mean/std; SwAV and DINO: 2 x 28 px crops of (0.35, 1)
    and 4 x 12 px of (0.08, 0.35)."""
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        DINOTransform,
        SimCLRTransform,
        SimSiamTransform,
        SwaVTransform,
        VICRegTransform,
    )

    jitter = dict(cj_prob=0.8, cj_strength=1.0, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.2, cj_hue=0.1)
    rest = dict(random_gray_scale=0.2, sigmas=(0.1, 2.0), hf_prob=0.5, vf_prob=0.0, rr_prob=0.0,
                normalize={"mean": list(data.mean), "std": list(data.std)})
    common = dict(gaussian_blur=0.5, **jitter, **rest)
    single = dict(input_size=data.size, min_scale=0.08)
    n_views = BENCH_METHODS[method].views
    if method == "swav":
        return SwaVTransform(crop_sizes=(data.size, 12), crop_counts=(2, n_views - 2), crop_min_scales=(0.35, 0.08),
                             crop_max_scales=(1.0, 0.35), **common)
    if method == "dino":
        # DINOTransform's second global view ignores cj_strength (it keeps 0.5), so the strength is 0.5
        # everywhere and the jitter values doubled: 0.5 x (0.8, 0.8, 0.4, 0.2) = (0.4, 0.4, 0.2, 0.1)
        return DINOTransform(global_crop_size=data.size, global_crop_scale=(0.35, 1.0), local_crop_size=12,
                             local_crop_scale=(0.08, 0.35), n_local_views=n_views - 2, cj_prob=0.8, cj_strength=0.5,
                             cj_bright=0.8, cj_contrast=0.8, cj_sat=0.4, cj_hue=0.2, gaussian_blur=(0.5, 0.5, 0.5),
                             solarization_prob=0.0, **rest)
    if method == "barlow":  # lightly's Barlow Twins example uses BYOL's two view transforms
        view = dict(solarization_prob=0.0, **single, **common)
        return BYOLTransform(BYOLView1Transform(**view), BYOLView2Transform(**view))
    if method == "simsiam":
        return SimSiamTransform(**single, **common)
    if method == "vicreg":
        return VICRegTransform(solarize_prob=0.0, **single, **common)
    return SimCLRTransform(**single, **common)


def _run_lightly(num_workers: str, a, method: str) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from replearn.data import load_data

    torch.manual_seed(0)
    data = load_data("fashion-mnist", "train")
    n_steps = a.warmup + a.steps
    images = data.images[: n_steps * a.batch_size]
    workers = int(num_workers)
    loader = DataLoader(
        _PILImages(images, _lightly_transform(method, data)), batch_size=a.batch_size, shuffle=True,
        drop_last=True, num_workers=workers, generator=torch.Generator().manual_seed(0),
    )
    model, step = _lightly_model(method, data, n_steps)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)
    prof = _Profile(a.warmup) if a.profile else None
    stamps: dict[str, list[float]] = {"start": [], "end": []}
    threads = torch.get_num_threads()
    total_loss = torch.zeros(())
    for i, (views, _) in enumerate(loader):
        stamps["start"].append(time.perf_counter())
        loss = step(views, i)
        total_loss += loss.detach().sum()  # lightly's SwAV loss has shape (1,)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        stamps["end"].append(time.perf_counter())
        if prof is not None:
            prof.step_end(i)
    if not torch.isfinite(total_loss):
        raise RuntimeError("lightly's loss became non-finite")
    del loader  # workers are joined before the children's peak RSS is read
    return {**stamps, "threads": threads, "precision": "32-true"}


def child(name: str, a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    framework, setting, method = CONTENDERS[name]
    t0 = time.perf_counter()
    res = _run_replearn(setting, a, method) if framework == "replearn" else _run_lightly(setting, a, method)
    res.update(
        name=name,
        wall_s=time.perf_counter() - t0,
        maxrss_mib=_maxrss_mib(resource.RUSAGE_SELF),
        children_maxrss_mib=_maxrss_mib(resource.RUSAGE_CHILDREN),
    )
    print("BENCH-RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------- child: FLOPs and peak


def count_flops(fn) -> int:
    """FLOPs of the ops ``fn()`` runs (matmuls and convolutions, forward and backward), as
    ``torch.utils.flop_counter.FlopCounterMode`` counts them: 2 per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def method_flops(method: str, data, batch_size: int, backbone_name: str = BACKBONE) -> dict:
    """One replearn training step of ``method`` as the bench builds it, fp32 on the CPU: FLOPs of
    forward + backward of its ``training_step`` on ``batch_size`` images (momentum encoders, heads
    and loss included), and of forward + backward of the backbone alone on the same views.
    Returns per-image and per-view figures; per view is the mean over the method's views (a 12 px
    crop costs less than a 28 px one)."""
    import torch

    from replearn.methods import METHODS, MethodOptions
    from replearn.nn import build_backbone
    from replearn.views import eval_view, recipe

    spec, cls, options = BENCH_METHODS[method], METHODS.get(method), _options(method)
    torch.manual_seed(0)

    def backbone():
        return build_backbone(backbone_name, data.channels, data.size, WIDTH)

    opts = MethodOptions(temperature=options["temperature"], proj_hidden=PROJ_HIDDEN, proj_dim=PROJ_DIM,
                         args=spec.margs, channels=data.channels, image_size=data.size, width=WIDTH)
    model = cls(backbone(), opts).train()
    sub = data.subset(torch.arange(min(len(data), max(4 * batch_size, 1024))))
    model.bind_data(sub)
    if model.needs_dataset_features:  # DeepCluster, PCL: clusters before the first step, as pretrain
        model.eval()
        with torch.no_grad():
            feats = model.dataset_features(eval_view(sub.batch(torch.arange(len(sub))), sub.mean, sub.std))
        model.train()
        model.set_progress(0, 100, 0, 1)
        model.on_dataset_features(feats)
    model.set_progress(1, 100, 0, 1)
    crop = options.get("crop_min_scale")
    rec = recipe(cls.views, crop_scale=(crop, 1.0) if crop else None)
    views = model.make_views(sub.batch(torch.arange(batch_size)), rec, data.size, data.mean, data.std,
                             torch.Generator().manual_seed(0))
    n_views = sum(len(v) for v in views)
    if n_views != spec.views * batch_size:
        raise RuntimeError(f"{method}: {n_views / batch_size:g} views per image, BENCH_METHODS says {spec.views}")
    index = torch.arange(batch_size)

    def step():
        loss, _ = model.training_step(views, index)
        loss.backward()

    bb = backbone().train()

    def backbone_step():
        for _, group in groupby(views, key=lambda v: v.shape[-2:]):
            bb(torch.cat(list(group))).sum().backward()

    step_flops, backbone_flops = count_flops(step), count_flops(backbone_step)
    return {"step_per_image": step_flops / batch_size, "backbone_per_view": backbone_flops / n_views,
            "backbone_per_image": backbone_flops / batch_size, "views": n_views / batch_size}


def peak_matmul(threads: int, size: int = MM_SIZE, repeats: int = MM_REPEATS, device: str = "cpu") -> dict:
    """The device's matmul peak in FLOP/s: ``torch.mm`` of two ``size`` x ``size`` matrices, fp32
    and bf16, on ``threads`` torch threads; the best of ``repeats`` after one warm-up (timed with
    CUDA events on a GPU)."""
    import torch

    torch.set_num_threads(threads)
    out = {"size": size, "repeats": repeats, "threads": threads}
    gen = torch.Generator().manual_seed(0)
    cuda = device.startswith("cuda")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = (torch.randn(size, size, generator=gen).to(device, dtype) for _ in range(2))
        torch.mm(x, y)
        best = float("inf")
        for _ in range(repeats):
            if cuda:
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                torch.mm(x, y)
                e1.record()
                e1.synchronize()
                best = min(best, e0.elapsed_time(e1) / 1e3)
            else:
                t0 = time.perf_counter()
                torch.mm(x, y)
                best = min(best, time.perf_counter() - t0)
        out[name] = 2 * size**3 / best
    return out


def flops_child(a) -> None:
    import torch

    from replearn.data import load_data

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    peak = peak_matmul(a.threads)
    data = load_data("fashion-mnist", "train")
    flops = {m: method_flops(m, data, a.batch_size) for m in a.methods}
    print("BENCH-FLOPS " + json.dumps({"peak": peak, "flops": flops, "wall_s": time.perf_counter() - t0}), flush=True)


# --------------------------------------------------------------------------- parent: run and report


def summarize(res: dict, a) -> dict:
    """views/s per window of consecutive steady steps, timed end-to-end (end of step i -> end of step j),
    so the time between steps (fetching the next batch, the framework's loop) counts too."""
    end, start = res["end"], res["start"]
    if len(end) < a.warmup + a.steps:
        raise RuntimeError(f"{res['name']}: {len(end)} steps ran, expected {a.warmup + a.steps}")
    views = BENCH_METHODS[CONTENDERS[res["name"]][2]].views * a.batch_size
    bounds = [a.warmup - 1 + round(k * a.steps / a.repeats) for k in range(a.repeats + 1)]
    rates = [views * (j - i) / (end[j] - end[i]) for i, j in zip(bounds[:-1], bounds[1:], strict=True)]
    lo, hi = bounds[0], bounds[-1]
    steady = end[hi] - end[lo]
    in_step = sum(end[k] - start[k] for k in range(lo + 1, hi + 1))
    return {
        "name": res["name"],
        "mean": sum(rates) / len(rates),
        "min": min(rates),
        "max": max(rates),
        "step_s": steady / (hi - lo),
        "in_step": in_step / steady,
        "rss": res["maxrss_mib"],
        "child_rss": res["children_maxrss_mib"],
        "threads": res["threads"],
        "precision": res["precision"],
        "auto_precision": res.get("auto_precision"),
    }


def _run_sub(args: list[str], tag: str, what: str, a) -> dict:
    """Run this script with ``args`` in a subprocess; the JSON of its last ``tag`` line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--batch-size", str(a.batch_size), "--threads", str(a.threads)]
    if a.profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if a.profile:
        sys.stderr.write(proc.stderr)
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith(tag + " ")), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(line[len(tag) + 1:])


def run_child(name: str, a) -> dict:
    return _run_sub(["--child", name], "BENCH-RESULT", name, a)


def run_flops(methods: list[str], a) -> dict:
    """The peak matmul rates and every method's FLOP counts, from one subprocess."""
    return _run_sub(["--child-flops", "--methods", *methods], "BENCH-FLOPS", "FLOP counting", a)


def machine() -> dict:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M).group(1).split()) if "flags" in cpuinfo else set()
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
    }


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "lightning", "lightly", "replearn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(Path.cwd()))
    except ValueError:
        exe_s = "python"
    return shlex.join([exe_s, *sys.argv])


def _refs(rows: list[dict]) -> dict[str, dict]:
    """Per method, lightly's fastest setting: the reference its replearn rows are divided by."""
    refs: dict[str, dict] = {}
    for r in rows:
        fw, _, method = CONTENDERS[r["name"]]
        if fw == "lightly" and (method not in refs or r["mean"] > refs[method]["mean"]):
            refs[method] = r
    return refs


def achieved(row: dict, flops: dict, peak: dict) -> dict:
    """The row's backbone FLOP/s (views/s x backbone fwd+bwd FLOPs per view) and its share of the
    fp32 and bf16 matmul peaks; empty where the method's FLOPs or the peak were not measured."""
    f = flops.get(CONTENDERS[row["name"]][2])
    if not f:
        return {}
    rate = row["mean"] * f["backbone_per_view"]
    out = {"flops": rate}
    for dtype in ("fp32", "bf16"):
        if peak.get(dtype):
            out[dtype] = rate / peak[dtype]
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


def table(rows: list[dict], refs: dict[str, dict], flops: dict | None = None, peak: dict | None = None) -> str:
    head = ("| method | contender | setting | views/s (mean) | min–max over windows | s/step | in-step share "
            "| backbone GFLOP/s | of fp32 peak | of bf16 peak | peak RSS MiB | threads | vs lightly |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        fw, setting, method = CONTENDERS[r["name"]]
        setting = f"precision {r['precision']}" if fw == "replearn" else f"num_workers={setting}, fp32"
        rss = f"{r['rss']:.0f}"
        if fw == "lightly" and CONTENDERS[r["name"]][1] != "0":
            rss += f" (largest worker {r['child_rss']:.0f})"
        ref = refs.get(method)
        if not BENCH_METHODS[method].lightly:
            ratio = "n/a"
        else:
            ratio = f"{r['mean'] / ref['mean']:.2f}x" if ref and fw == "replearn" else ("ref" if r is ref else "")
        ach = achieved(r, flops or {}, peak or {})
        gflops = f"{ach['flops'] / 1e9:.1f}" if ach else "–"
        lines.append(
            f"| {method} | {r['name'].split('/')[1]} | {setting} | {r['mean']:.0f} | {r['min']:.0f}–{r['max']:.0f} "
            f"| {r['step_s']:.3f} | {100 * r['in_step']:.0f}% | {gflops} | {_pct(ach.get('fp32'))} "
            f"| {_pct(ach.get('bf16'))} | {rss} | {r['threads']} | {ratio} |"
        )
    return "\n".join(lines)


SETTING_KEYS = ("steps", "warmup", "repeats", "batch_size", "threads")


def new_results() -> dict:
    return {"runs": [], "flops": {}, "rows": {}}


def merge_results(results: dict, run: dict, flops: dict, rows: list[dict]) -> dict:
    """Add one run (its meta, FLOP counts and rows) to ``results``: a contender's newer row and a
    method's newer FLOP count replace the older; every run's meta (and peak) is kept."""
    results["runs"].append(run)
    results["flops"].update(flops)
    for r in rows:
        results["rows"][r["name"]] = {**r, "run": len(results["runs"]) - 1}
    return results


def best_peak(results: dict) -> dict:
    """The best matmul rate of every run's measurement (the peak is a best-of figure)."""
    peaks = [r["peak"] for r in results["runs"] if r.get("peak")]
    out = {k: max(p[k] for p in peaks) for k in ("fp32", "bf16") if peaks}
    if peaks:
        out.update(size=peaks[0]["size"], repeats=peaks[0]["repeats"], threads=peaks[0]["threads"], runs=len(peaks))
    return out


def _gflop(x: float) -> str:
    return f"{x / 1e9:.0f}" if x >= 1e10 else f"{x / 1e9:.1f}"


def report(results: dict) -> str:
    rows = sorted(results["rows"].values(), key=lambda r: list(CONTENDERS).index(r["name"]))
    runs, flops, peak = results["runs"], results["flops"], best_peak(results)
    used = [runs[i] for i in sorted({r["run"] for r in rows})]
    last = used[-1]
    mach, vers, st = last["machine"], last["versions"], last["settings"]
    refs = _refs(rows)
    auto = next((r["auto_precision"] for r in rows if r.get("auto_precision")), None)
    isa = f"AMX {'yes' if mach['amx_bf16'] else 'no'}, avx512_bf16 {'yes' if mach['avx512_bf16'] else 'no'}"
    methods = sorted({CONTENDERS[r["name"]][2] for r in rows}, key=list(BENCH_METHODS).index)
    many = len(used) > 1
    out = [
        f"- Machine: {mach['cpu']}, {mach['cores']} cores ({isa}); {st['threads']} torch threads in every contender"
        + (f"; precision `auto` resolves to {auto} here" if auto else ""),
        f"- Versions: torch {vers['torch']}, torchvision {vers['torchvision']}, lightning {vers['lightning']}, "
        f"lightly {vers['lightly']}, replearn {vers['replearn']}",
        ("- Commands (the rows merged from each run's --save file): " if many else "- Command: ")
        + "; ".join(f"`{r['command']}`" for r in used),
        "- Commit: " + ", ".join(dict.fromkeys(r["commit"] for r in used)) + "; date: "
        + " to ".join(dict.fromkeys((used[0]["date"], last["date"]))),
        "- Load average (1 min) before/after: " + "; ".join(f"{r['load'][0]} / {r['load'][1]}" for r in used),
    ]
    if any({k: r["settings"][k] for k in SETTING_KEYS} != {k: st[k] for k in SETTING_KEYS} for r in used):
        out.append("- Warning: the merged runs differ in their settings: "
                   + "; ".join(", ".join(f"{k} {r['settings'][k]}" for k in SETTING_KEYS) for r in used))
    if peak:
        each = f" in each of {peak['runs']} runs" if peak["runs"] > 1 else ""
        out.append(
            f"- Peak matmul (torch.mm of two {peak['size']} x {peak['size']} matrices, {peak['threads']} torch threads, "
            f"best of {peak['repeats']}{each}): "
            f"fp32 **{_gflop(peak['fp32'])} GFLOP/s**, bf16 **{_gflop(peak['bf16'])} GFLOP/s**"
        )
    counted = [m for m in methods if m in flops]
    if counted:
        out.append(
            "- FLOPs of one replearn training step (forward + backward, FlopCounterMode, fp32, batch "
            f"{st['batch_size']}), MFLOP: whole step per image / backbone alone per view x views per image: "
            + ", ".join(f"{m} {flops[m]['step_per_image'] / 1e6:.0f} / {flops[m]['backbone_per_view'] / 1e6:.1f} "
                        f"x {flops[m]['views']:g}" for m in counted)
        )
    out += [
        f"- Setup: Fashion-MNIST train, batch {st['batch_size']}, {BACKBONE} width {WIDTH}, heads "
        f"{PROJ_HIDDEN}->{PROJ_DIM}, AdamW lr {LR}; {st['warmup']} warm-up steps skipped, {st['steps']} steady steps "
        f"in {st['repeats']} windows; each contender in its own process; lightly's workers share the same cores as "
        "the training loop. Views per step = views per image x batch, every input the backbone sees counting: "
        + ", ".join(f"{m} {BENCH_METHODS[m].views}" for m in methods)
        + " (SwAV, DINO: 2 crops of 28 px + 4 of 12 px; PIRL: a view + 9 tiles of 12 px; Jigsaw: 9 tiles; CPC: the "
        "image + 25 patches of 12 px; RotNet: 4 rotations). Both sides of a method use the same heads, loss settings "
        "and momentum (MoCo: queue 8192, T 0.2, symmetric; BYOL: cosine momentum from 0.99; SwAV: 100 prototypes, "
        "T 0.1, Sinkhorn 0.05 x 3; SimSiam: 3-layer projector, predictor 128-32-128; Barlow Twins: 3-layer "
        "projector, lambda 0.0051; VICReg: 3-layer expander, weights 25/25/1; DINO: 3-layer head with BN and ReLU, "
        "2048-way weight-normalised last layer, teacher on the 2 large crops, teacher T 0.04 -> 0.06 over 3 "
        "epochs, student T 0.1, centre 0.9, cosine momentum from 0.99); lightly runs its documented loop with its "
        "own per-image transforms. The methods lightly lacks run with their zoo config's method arguments (PCL "
        "with its ProtoNCE term from the first step; the generative methods on convnet, not the zoo's flatconv).",
        "",
        table(rows, refs, flops, peak),
        "",
        "How to read the FLOP columns: *backbone GFLOP/s* = views/s x the backbone's forward + backward FLOPs per "
        "view (the mean over the method's views, counted once per method on the CPU, outside the timed loops): the "
        "useful work both sides of a method do alike. *of fp32 peak* and *of bf16 peak* divide it by the measured "
        "matmul peaks: the FLOP floor (the time that work would take at the peak) over the time it took. Both columns "
        "are given for every row; read the fp32 rows (replearn-fp32, and lightly, which runs fp32) against the fp32 "
        "peak and the replearn-bf16 rows against the bf16 peak (a bf16 row can pass 100% of the fp32 peak). The gap "
        "to 100% is what the column does not credit: heads, loss, momentum encoders and teachers (the header's "
        "whole-step counts include them), augmentation, the optimiser, data loading and the loop itself, plus the "
        "convolutions running below the large matmul's rate. So a method with more such work (DINO's teacher and "
        "2048-way head, CPC's predictors, a generative method's decoder) shows a lower share at the same efficiency. "
        "Peak RSS is the contender's process (and its largest DataLoader worker).",
        "",
    ]
    for r in rows:
        fw, _, method = CONTENDERS[r["name"]]
        if fw == "replearn" and method in refs:
            ref = refs[method]
            out.append(f"- {method}: replearn/lightly ({r['name']} / {ref['name']}): **{r['mean'] / ref['mean']:.2f}x**")
    out.append(f"- Not in this bench: {LEFT_OUT_TEXT}.")
    if any(m in methods for m in ("deepcluster", "pcl")):
        out.append("- DeepCluster and PCL cluster the whole training set before the first epoch and after each one; "
                   "that pass is outside the timed steps (here it clusters the run's images once, before step 0).")
    busy = [r["load"][0] for r in used if r["load"][0] is not None and r["load"][0] > 0.5 * mach["cores"]]
    if busy:
        out.append(
            f"- Warning: the machine was busy (load {' / '.join(map(str, busy))} on {mach['cores']} cores): with as "
            "many torch threads as cores, every op waits for a descheduled thread, so these figures are noisy and not "
            "for the record."
        )
    return "\n".join(out) + "\n"


def write_section(path: Path, body: str) -> None:
    """Replace the text between the throughput markers, or append the section; other text stays."""
    section = f"{MARK_START}\n## Training throughput (views/s)\n\n{body}{MARK_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_START in text and MARK_END in text and text.index(MARK_START) < text.index(MARK_END):
        i, j = text.index(MARK_START), text.index(MARK_END) + len(MARK_END)
        text = text[:i] + section + text[j:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _methods(names: list[str]) -> list[str]:
    """Method names and group names (all, paired, replearn-only) -> methods, in table order."""
    chosen = {m for n in names for m in METHOD_GROUPS.get(n, [n])}
    return [m for m in BENCH_METHODS if m in chosen]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="steady steps per contender (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="steps skipped at the start")
    p.add_argument("--repeats", type=int, default=3, help="windows the steady steps are split into")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: cores)")
    p.add_argument("--quick", action="store_true", help="smoke check: 2 warm-up + 3 steady steps")
    p.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=None, metavar="METHOD/CONTENDER",
                   help="contenders, e.g. simclr/replearn-bf16 dino/lightly-w0")
    p.add_argument("--methods", nargs="+", choices=[*BENCH_METHODS, *METHOD_GROUPS], default=["all"], metavar="METHOD",
                   help=f"methods ({', '.join(BENCH_METHODS)}), or a group: all, paired (lightly has it too), "
                   "replearn-only")
    p.add_argument("--save", metavar="JSON", help="merge this run's rows, FLOP counts and peak into this file "
                   "(a contender's newer row replaces the older), so a full run can be split")
    p.add_argument("--write", metavar="MARKDOWN", help="update the throughput section of this file (with --save: "
                   "from every row saved there)")
    p.add_argument("--profile", nargs="?", const="simclr/replearn-fp32", choices=list(CONTENDERS), default=None,
                   metavar="METHOD/CONTENDER",
                   help="print the top ops (self CPU) of one steady loop iteration of one contender")
    p.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("--child-flops", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.methods = _methods(a.methods)
    if a.child:
        child(a.child, a)
        return
    if a.child_flops:
        flops_child(a)
        return
    if a.only is None:
        a.only = [c for c in CONTENDERS if CONTENDERS[c][2] in a.methods]
    if a.quick:
        a.steps, a.warmup, a.repeats = 3, 2, 3
    if a.profile:
        a.only, a.steps, a.repeats = [a.profile], 1, 1
    if a.warmup < 1 or a.steps < a.repeats:
        p.error("need --warmup >= 1 and --steps >= --repeats")
    if (a.write or a.save) and (a.quick or a.profile):
        p.error("--quick and --profile figures are not for the record; drop --write and --save")

    mach, vers = machine(), versions()
    print(f"{mach['cpu']}, {mach['cores']} cores, AMX {mach['amx_bf16']}, avx512_bf16 {mach['avx512_bf16']}; "
          f"torch {vers['torch']}, lightly {vers['lightly']}; torch threads per contender: {a.threads}", flush=True)
    load0 = loadavg()
    methods = sorted({CONTENDERS[c][2] for c in a.only}, key=list(BENCH_METHODS).index)
    fl: dict = {}
    if not a.profile:
        print(f"counting FLOPs ({', '.join(methods)}) and measuring the peak matmul rate ...", flush=True)
        fl = run_flops(methods, a)
        print(f"  peak fp32 {fl['peak']['fp32'] / 1e9:.1f}, bf16 {fl['peak']['bf16'] / 1e9:.1f} GFLOP/s; "
              f"{fl['wall_s']:.0f} s in all", flush=True)
    rows = []
    for name in a.only:
        print(f"running {name} ({a.warmup} warm-up + {a.steps} steps) ...", flush=True)
        res = run_child(name, a)
        if res["threads"] != a.threads:
            print(f"  note: {name} ran with {res['threads']} threads, not {a.threads}", flush=True)
        rows.append(summarize(res, a))
        r = rows[-1]
        ach = achieved(r, fl.get("flops", {}), fl.get("peak", {}))
        extra = f", {ach['flops'] / 1e9:.1f} backbone GFLOP/s" if ach else ""
        print(f"  {r['mean']:.0f} views/s ({r['min']:.0f}–{r['max']:.0f}), {r['step_s']:.3f} s/step{extra}, "
              f"peak RSS {r['rss']:.0f} MiB, {res['wall_s']:.0f} s in all", flush=True)
    run = {"command": command_line(), "commit": git_commit(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "load": [load0, loadavg()], "settings": {k: getattr(a, k) for k in SETTING_KEYS}, "machine": mach,
           "versions": vers, "peak": fl.get("peak")}
    results = new_results()
    if a.save and Path(a.save).exists():
        results = json.loads(Path(a.save).read_text())
    merge_results(results, run, fl.get("flops", {}), rows)
    if a.save:
        Path(a.save).parent.mkdir(parents=True, exist_ok=True)
        Path(a.save).write_text(json.dumps(results, indent=1))
        print(f"saved {a.save} ({len(results['rows'])} rows)")
    body = report(results)
    print()
    print(body)
    if a.write:
        write_section(Path(a.write), body)
        print(f"updated {a.write}")


if __name__ == "__main__":
    main()
