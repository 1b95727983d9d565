"""Pretraining: every method trains, resume equals an uninterrupted run, bad runs stop safely."""

import csv
import json
import math

import lightning.pytorch as pl
import pytest
import torch
import yaml

from replearn.data import load_data
from replearn.errors import ReplearnError
from replearn.methods import METHODS, MethodOptions
from replearn.methods.base import Method
from replearn.nn import build_backbone, load_encoder
from replearn.train.run import pretrain
from replearn.views import eval_view, recipe

TINY = dict(data="digits", backbone="convnet", width=8, batch_size=64, limit=256, knn_monitor=False, precision="32")


@pytest.mark.filterwarnings("ignore:digits has no group ids")  # group falls back to instance groups
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_two_steps(name):
    """For every registered method, two CPU steps on tiny data: a finite loss, a gradient for every
    trainable parameter, momentum/teacher networks that get none yet move after their update, and
    a batch whose embeddings have not collapsed to one point."""
    torch.manual_seed(0)
    data = load_data("digits", "train").subset(torch.arange(256))
    data.captions = [f"a photo of the digit {y}" for y in data.labels.tolist()]  # clip's image-text pairs
    backbone = build_backbone("convnet", 1, data.size, width=8)
    # the ladder's progressive schedule keeps its shallow levels off (no gradient) early in training:
    # here every level is on; tests/test_generative.py checks the schedule
    args = {"progressive": False} if name == "ladder" else {}
    method = METHODS.get(name)(backbone, MethodOptions(channels=1, image_size=data.size, width=8, args=args))
    method.bind_data(data)
    if method.needs_dataset_features:  # clustering methods: what the trainer does before epoch 0
        method.eval()
        with torch.no_grad():
            feats = method.dataset_features(eval_view(data.images, data.mean, data.std)).float()
        method.train()
        method.on_dataset_features(feats)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    rec = recipe(method.views)
    images, index = data.images[:32], torch.arange(32)
    frozen = {n: p for n, p in method.named_parameters() if not p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in frozen.items()}
    before = [p.detach().clone() for p in method.parameters()]
    for step in range(2):
        method.set_progress(step, 10, 0, 1)
        g = torch.Generator().manual_seed(step)
        views = method.make_views(images, rec, data.size, data.mean, data.std, g)
        loss, logs = method.training_step(views, index)
        assert math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        for pname, p in method.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {pname} gets no gradient"
            else:
                assert p.grad is None, f"{name}: momentum parameter {pname} got a gradient"
        opt.step()
        method.after_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))
    if frozen:  # the momentum/teacher network moved through its update, not through the optimiser
        assert any(not torch.equal(frozen_before[n], p) for n, p in frozen.items()), f"{name}: target never moves"
    feats = torch.nn.functional.normalize(logs["features"].float(), dim=1)
    assert feats.std(0).mean() > 1e-3  # the batch did not collapse to one point
    assert torch.cdist(feats, feats).max() > 1e-2


def test_method_args_are_checked():
    backbone = build_backbone("convnet", 1, 8, width=8)
    with pytest.raises(ReplearnError, match="has no argument 'nonsense'"):
        METHODS.get("simclr")(backbone, MethodOptions(args={"nonsense": 1}))


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def _weights(run):
    return torch.load(run / "last.ckpt", weights_only=False)["state_dict"]


def test_resume_equals_uninterrupted(tmp_path):
    straight = pretrain(out=str(tmp_path / "straight"), epochs=2, **TINY)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(out=str(tmp_path / "cut"), epochs=2, callbacks=[_StopAfterFirstEpoch()], **TINY)
    assert torch.load(tmp_path / "cut" / "last.ckpt", weights_only=False)["epoch"] == 0
    started = json.loads((tmp_path / "cut" / "meta.json").read_text())["started"]
    resumed = pretrain(out=str(tmp_path / "cut"), resume=True)
    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["started"] == started and len(meta["resumed_at"]) == 1  # the run's history is kept
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    # the metrics of the first epoch survive the resume
    rows = list(csv.DictReader(open(resumed / "metrics.csv")))
    assert {r["epoch"] for r in rows if r.get("loss_epoch")} == {"0", "1"}


def test_run_folder_contents(tmp_path):
    torch.backends.cudnn.benchmark = False
    run = pretrain(out=str(tmp_path / "run"), epochs=1, **{**TINY, "knn_monitor": True})
    assert torch.backends.cudnn.benchmark  # the Trainer lets cuDNN autotune (the shapes are fixed)
    for name in ("config.yaml", "metrics.csv", "last.ckpt", "encoder.pt", "meta.json"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["data"] == "digits"
    enc, spec = load_encoder(run)
    assert spec["image_size"] == 8 and spec["channels"] == 1
    raw = torch.load(run / "encoder.pt", weights_only=True)  # plain tensors and types only
    assert raw["format"] == "replearn-encoder/1"
    x = torch.zeros(2, 1, 8, 8)
    assert enc(x).shape == (2, enc.out_dim)
    header = open(run / "metrics.csv").readline()
    assert "knn_monitor" in header and "loss_epoch" in header


def test_refuses_to_overwrite_a_run(tmp_path):
    pretrain(out=str(tmp_path / "run"), epochs=1, **TINY)
    with pytest.raises(ReplearnError, match="already holds a run"):
        pretrain(out=str(tmp_path / "run"), epochs=1, **TINY)


class _NaNAtStep(Method):
    def __init__(self, backbone, opts):
        super().__init__(backbone, opts)
        self.calls = 0

    def training_step(self, views, index):
        self.calls += 1
        loss = self.backbone(views[0]).mean()
        return (loss * float("nan") if self.calls > 4 else loss), {}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._items, "nan-test", _NaNAtStep)
    with pytest.raises(ReplearnError, match="became nan at step 4.*last good checkpoint"):
        pretrain(out=str(tmp_path / "run"), epochs=3, method="nan-test", **TINY)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["epoch"] == 0  # epoch 0 was good


class _Collapsing(Method):
    def training_step(self, views, index):
        h = self.backbone(views[0])
        return h.mean(), {"features": torch.ones_like(h)}  # every item the same point


def test_collapse_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._items, "collapse-test", _Collapsing)
    with pytest.raises(ReplearnError, match="collapsed in epoch 0.*no checkpoint"):
        pretrain(out=str(tmp_path / "run"), epochs=2, method="collapse-test", **TINY)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_cli_resume_takes_a_longer_epochs_from_the_command_line(tmp_path):
    from replearn.cli.main import main

    out = str(tmp_path / "run")
    args = ["--data", "digits", "--width", "8", "--batch-size", "64", "--limit", "256", "--knn-monitor", "false",
            "--precision", "32"]
    assert main(["pretrain", *args, "--epochs", "1", "--out", out]) == 0
    assert main(["pretrain", "--out", out, "--resume", "--epochs", "2"]) == 0  # "2" arrives as a string
    assert yaml.safe_load(open(f"{out}/config.yaml"))["epochs"] == 2
    assert torch.load(f"{out}/last.ckpt", weights_only=False)["epoch"] == 1
    assert main(["pretrain", "--out", out, "--resume", "--epochs", "two"]) == 2  # checked like any option


def test_epoch_sampler_is_a_seeded_split_permutation_or_a_weighted_draw():
    from replearn.train.module import EpochSampler

    ranks = [EpochSampler(10, seed=3, rank=r, world=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))  # disjoint halves of one permutation
    assert a == list(ranks[0])  # a function of (seed, epoch) alone
    ranks[0].set_epoch(2)
    assert list(ranks[0]) != a

    asked = []

    def weights():  # index 0 and 9 never, index 4 nine times as often as each other one
        asked.append(1)
        w = torch.ones(10, dtype=torch.float64)
        w[[0, 9]], w[4] = 0, 9
        return w

    s = EpochSampler(10, seed=0, weights=weights)
    counts = torch.zeros(10)
    for epoch in range(400):
        s.set_epoch(epoch)
        for i in s:
            counts[i] += 1
    assert len(asked) == 400  # asked again at every epoch's start
    assert counts[0] == counts[9] == 0 and counts.sum() == 4000
    share = counts / counts.sum()
    assert abs(share[4].item() - 9 / 16) < 0.03 and all(abs(share[i].item() - 1 / 16) < 0.02 for i in (1, 2, 3, 5))


class _ReadEvery(pl.Callback):
    def __init__(self, every: int):
        self.every = every

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.read_every = self.every  # what a GPU does: read the verdicts back every few steps


@pytest.mark.parametrize("every,message", [(3, "non-finite in 2 step.* up to step 5"), (100, "non-finite in 4 step.* up to step 7")])
def test_nan_read_back_late_still_stops_before_the_next_checkpoint(tmp_path, monkeypatch, every, message):
    """The GPU path: the non-finite check is read every few steps and at the epoch's end, yet the
    checkpoint kept is the last good epoch's (NaN from step 4, the first step of epoch 1)."""
    monkeypatch.setitem(METHODS._items, "nan-test", _NaNAtStep)
    with pytest.raises(ReplearnError, match=f"{message}.*last good checkpoint"):
        pretrain(out=str(tmp_path / "run"), epochs=3, method="nan-test", callbacks=[_ReadEvery(every)], **TINY)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["epoch"] == 0


def test_resident_images_train_exactly_as_loaded_batches(tmp_path, monkeypatch):
    """The images kept on the device and sliced by the step (the GPU path; on a CPU a view of the
    set) give the same weights as batches the DataLoader brings."""
    from replearn.train import module

    resident = pretrain(out=str(tmp_path / "resident"), epochs=1, method="simclr", **TINY)
    monkeypatch.setattr(module, "resident_images", lambda data, device, free_bytes=None: None)
    loaded = pretrain(out=str(tmp_path / "loaded"), epochs=1, method="simclr", **TINY)
    a = torch.load(resident / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(loaded / "last.ckpt", weights_only=False)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_resident_images_only_when_they_fit():
    from replearn.data.imageset import ImageSet
    from replearn.train.module import RESIDENT_SHARE, resident_images

    data = load_data("digits", "train")
    size = data.images.numel()  # uint8: one byte each
    assert resident_images(data, torch.device("cpu")) is data.images  # a CPU: the set itself, no copy
    meta = torch.device("meta")  # stands in for a GPU: the same code, no memory
    assert resident_images(data, meta, free_bytes=int(size / RESIDENT_SHARE) - 1) is None  # just too big
    moved = resident_images(data, meta, free_bytes=int(size / RESIDENT_SHARE) + 1)
    assert moved.device.type == "meta" and moved.shape == data.images.shape and moved.dtype == torch.uint8
    lazy = ImageSet(ids=data.ids, labels=data.labels, name="lazy", channels=1, size=8, decode=lambda i: data.images[i])
    assert resident_images(lazy, torch.device("cpu")) is None  # decoded lazily: the DataLoader's job


def test_compile_without_a_cpp_compiler_trains_eagerly(tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    run = pretrain(out=str(tmp_path / "run"), epochs=1, method="simclr", compile=True, **TINY)
    assert "no C++ compiler found" in capsys.readouterr().out
    assert (run / "encoder.pt").is_file()


def test_fused_optimiser_only_on_a_gpu_and_a_valid_flag():
    from replearn.train.module import fused_on

    assert fused_on(torch.device("cpu")) == {}
    flags = fused_on(torch.device("cuda"))
    assert flags == {"fused": True}
    # the flag is one AdamW takes (torch runs fused AdamW on a CPU too): one step equals the default's
    w1, w2 = (torch.nn.Parameter(torch.ones(4)) for _ in range(2))
    for w, kw in ((w1, {}), (w2, flags)):
        opt = torch.optim.AdamW([w], lr=0.1, **kw)
        w.grad = torch.arange(4.0)
        opt.step()
    torch.testing.assert_close(w1, w2)
