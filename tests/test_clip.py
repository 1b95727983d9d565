"""CLIP: the symmetric InfoNCE against a float64 loop and closed forms, 2 gloo processes against 1, the
tokeniser, pairs CSV / .npz captions with their skips, Recall@K, and a run whose prompts classify;
image-image pairs (CSV image,image2 / .npz images2): their skips, both towers' gradients, a run
that finds each image's partner, and its exact resume."""

import copy
import csv
import json
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gloo import in_processes, needs_gloo
from replearn.data import ImageSet, load_data
from replearn.data.imageset import concat
from replearn.errors import ReplearnError
from replearn.evaluate.zeroshot import image_image_recall, image_text_recall, zero_shot
from replearn.losses import clip_loss
from replearn.methods import METHODS, MethodOptions
from replearn.nn import build_backbone, load_encoder
from replearn.nn.text import PAD, UNK, TextEncoder, Tokenizer, load_text_encoder


def naive_clip_loss(img, txt, scale):
    """Both directions written out in float64: -log of the partner's softmax share, averaged."""
    u = [x / x.norm() for x in img.double()]
    v = [x / x.norm() for x in txt.double()]
    n, s = len(u), math.exp(scale)

    def direction(a, b):
        return sum(-math.log(math.exp(s * float(a[i] @ b[i])) / sum(math.exp(s * float(a[i] @ b[j])) for j in range(n)))
                   for i in range(n)) / n

    return (direction(u, v) + direction(v, u)) / 2


@pytest.mark.parametrize("scale", [0.0, math.log(1 / 0.07), math.log(100)])
def test_clip_loss_matches_naive_loop_both_directions(scale):
    torch.manual_seed(0)
    img, txt = torch.randn(7, 5), torch.randn(7, 5)
    assert abs(clip_loss(img, txt, torch.tensor(scale)).item() - naive_clip_loss(img, txt, scale)) < 1e-5
    # symmetric: swapping images and texts swaps the two directions, their mean stays
    assert abs(clip_loss(txt, img, scale).item() - clip_loss(img, txt, scale).item()) < 1e-6


def test_clip_loss_closed_forms():
    n, s = 5, 3.0  # logits are exp(logit_scale) * cosine
    eye = torch.eye(n)  # identical orthonormal pairs: cos 1 with the partner, 0 with every other
    assert abs(clip_loss(eye, eye, math.log(s)).item() - math.log(1 + (n - 1) * math.exp(-s))) < 1e-6
    same = torch.ones(n, 3)  # every embedding the same point: chance, log N
    assert abs(clip_loss(same, 3 * same, math.log(s)).item() - math.log(n)) < 1e-6


def test_clip_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(2)
    img, txt = torch.randn(16, 8), torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = clip_loss(img, txt, math.log(100))  # scale 100: bf16 logits would be off by ~0.4
    assert loss.dtype == torch.float32
    assert abs(loss.item() - clip_loss(img, txt, math.log(100)).item()) < 1e-6


def test_clip_loss_gradients_match_float64_reference():
    torch.manual_seed(1)
    img = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    clip_loss(img, txt, scale).backward()
    ref = [t.detach().clone().requires_grad_(True) for t in (img, txt, scale)]
    u, v = (x / x.norm(dim=1, keepdim=True) for x in ref[:2])
    logits = ref[2].exp() * u @ v.T
    target = torch.arange(6)
    ((nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2).backward()
    for got, want in zip((img, txt, scale), ref, strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- 2 processes x B == 1 process x 2B

B, D_IN = 4, 10
CAPTIONS = [f"a {c} {s} here" for c in ("red", "green", "blue", "gold") for s in ("cat", "dog")]  # 2B pairs


def _method():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(D_IN, 12), nn.ReLU())  # BN-free: batch statistics would differ
    backbone.out_dim = 12
    method = METHODS.get("clip")(backbone, MethodOptions(proj_dim=6, args={"text_width": 16, "text_heads": 2}))
    method.bind_data(SimpleNamespace(name="pairs", captions=CAPTIONS))
    return method


class _Step(nn.Module):
    """DDP syncs gradients of what runs through its forward, so the step goes through one."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views, index):
        return self.method.training_step(views, index)[0]


def _images():
    return torch.randn(2 * B, D_IN, generator=torch.Generator().manual_seed(1))


def _worker(rank, world):
    method = _method()
    model = DDP(_Step(method))
    sl = slice(rank * B, (rank + 1) * B)
    loss = model([_images()[sl]], torch.arange(2 * B)[sl])
    loss.backward()
    dist.all_reduce(loss.detach(), op=dist.ReduceOp.SUM)
    return {"loss": loss.item() / world, "grads": {n: p.grad for n, p in method.named_parameters()}}


@needs_gloo
def test_two_processes_equal_one_process_with_double_batch():
    got = in_processes(_worker, 2)[0]
    method = _method()
    loss = method.training_step([_images()], torch.arange(2 * B))[0]
    loss.backward()
    assert abs(got["loss"] - loss.item()) < 1e-6
    for name, p in method.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert got["grads"]["logit_scale"].abs() > 0  # the learned temperature is in the comparison


# ---------------------------------------------------------------- tokeniser and text encoder


def test_tokeniser_ids_unknown_words_padding_and_cut():
    tok = Tokenizer.fit(["A red Cat", "a red dog", "the dog"], max_len=4)
    assert tok.words == ["a", "cat", "dog", "red", "the"] and len(tok) == 7  # pad, unk, then the words
    ids = tok(["a RED cat!", "a zebra", "", "the dog the dog the dog"])
    assert ids.dtype == torch.int64
    assert ids.tolist() == [
        [2, 5, 3, PAD],  # lowercased word tokens, punctuation dropped
        [2, UNK, PAD, PAD],  # a word outside the vocabulary
        [UNK, PAD, PAD, PAD],  # no word at all: one unknown token, never an all-padding row
        [6, 4, 6, 4],  # cut at max_len
    ]
    assert Tokenizer.fit(["b b a c c c"], max_words=2).words == ["b", "c"]  # the most frequent words


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = TextEncoder(10, out_dim=6, width=16, heads=2, max_len=8).eval()
    ids = torch.tensor([[2, 3, 4]])
    padded = torch.tensor([[2, 3, 4, PAD, PAD, PAD]])
    torch.testing.assert_close(enc(ids), enc(padded))
    assert not torch.allclose(enc(ids), enc(torch.tensor([[2, 3, 5]])))


def test_clip_without_captions_says_what_it_needs():
    data = load_data("digits", "train").subset(torch.arange(32))
    method = METHODS.get("clip")(build_backbone("convnet", 1, 8, width=8), MethodOptions())
    with pytest.raises(ReplearnError, match="has no captions") as e:
        method.bind_data(data)
    assert "a CSV image,caption or an .npz with captions" in e.value.hint


# ---------------------------------------------------------------- pairs CSV and .npz captions

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
ADJECTIVES, PLACES = ["small", "big", "shiny", "plain", "old", "new"], ["table", "floor", "wall", "desk"]
TEMPLATES = ["a {adj} {label} on the {place}", "my {label}, {adj}", "the {place} holds a {label}"]


def make_pairs(root, per_class=64, seed=0, size=16):
    """Images of 4 classes (a coloured square at a random place on dark noise), each with a caption
    from templates naming its class among other words; rows image,caption,label of pairs.csv."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for label, rgb in COLOURS.items():
        for i in range(per_class):
            a = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
            x, y = rng.integers(0, size - 10, 2)
            a[y : y + 10, x : x + 10] = rgb
            Image.fromarray(a).save(root / "img" / f"{label}{i}.png")
            words = dict(adj=ADJECTIVES[rng.integers(6)], label=label, place=PLACES[rng.integers(4)])
            rows.append([f"img/{label}{i}.png", TEMPLATES[rng.integers(3)].format(**words), label])
    return rows


def write_csv(path, rows, header=("image", "caption", "label")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([list(header), *rows])
    return path


def test_pairs_csv_skips_empty_captions_and_missing_or_broken_images(tmp_path):
    rows = make_pairs(tmp_path, per_class=2)
    (tmp_path / "img" / "broken.png").write_text("not an image")
    absolute = str(tmp_path / "img" / "blue0.png")
    bad = [["img/red0.png", "  ", "red"], ["img/nowhere.png", "a cat", "red"], ["img/broken.png", "a dog", "red"]]
    path = write_csv(tmp_path / "pairs.csv", [*rows, *bad, [absolute, "blue again", "blue"]])
    data = load_data(str(path), image_size=16)
    assert len(data) == 9 and data.captions == [r[1] for r in rows] + ["blue again"]
    assert data.ids[-1] == absolute and data.images.shape == (9, 3, 16, 16)
    assert data.classes == ["blue", "green", "red", "yellow"] and data.labels[-1] == 0
    skipped = dict(data.skipped)
    assert len(data.skipped) == 3
    assert "empty caption" in skipped["img/red0.png"] and "no such file" in skipped["img/nowhere.png"]
    assert "not an image" in skipped["img/broken.png"]
    assert data.subset([8, 0]).captions == ["blue again", rows[0][1]]


def test_pairs_csv_with_nothing_usable_or_no_header_is_a_one_line_error(tmp_path):
    path = write_csv(tmp_path / "none.csv", [["img/a.png", "", ""], ["img/b.png", "a b", ""]])
    with pytest.raises(ReplearnError, match=r"no usable image-caption pair .*\(2 row\(s\) skipped\)") as e:
        load_data(str(path))
    assert "empty caption" in e.value.hint and "no such file" in e.value.hint
    path = write_csv(tmp_path / "plain.csv", [["img/a.png", "a cat"]], header=("path", "text"))
    with pytest.raises(ReplearnError, match="no header row image,caption"):
        load_data(str(path))


def test_npz_captions_load_and_empty_ones_are_skipped(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "p.npz", images=images, labels=np.array(["cat", "dog", "cat", "dog"]),
             captions=np.array(["a cat", "", "the cat", "a dog"]))
    data = load_data(str(tmp_path / "p.npz"))
    assert data.captions == ["a cat", "the cat", "a dog"] and data.ids == ["0", "2", "3"]
    assert data.skipped == [("1", "empty caption")] and data.classes == ["cat", "dog"]
    np.savez(tmp_path / "bad.npz", images=images, captions=np.arange(4))
    with pytest.raises(ReplearnError, match="are not 4 strings"):
        load_data(str(tmp_path / "bad.npz"))


# ---------------------------------------------------------------- retrieval and a whole run


def test_image_text_recall_on_a_hand_made_case():
    def at(*degrees):
        r = torch.tensor(degrees, dtype=torch.float64).deg2rad()
        return torch.stack([r.cos(), r.sin()], 1) * 3  # any length: cosine similarity ranks

    img, txt = at(0, 90, 45, -45), at(10, 85, 225, -40)
    # image 0 (0 deg): texts 0, 3, 1, 2 -> own first. image 1: texts 1, 0, ... -> own first.
    # image 2 (45 deg): texts 0 (35 deg off), 1 (40), 3 (85), its own text 2 (180) last. image 3: own first.
    r = image_text_recall(img, txt, ["a", "b", "c", "d"], ks=(1, 3, 4))
    assert r == {"recall@1": 75.0, "recall@3": 75.0, "recall@4": 100.0}
    # texts 1 and 2 now read alike: image 2 finds its caption second, image 1 still first
    assert image_text_recall(img, txt, ["a", "c", "c", "d"], ks=(1, 2)) == {"recall@1": 75.0, "recall@2": 100.0}
    # image->image: only the own partner counts, by position; image 2's is its 4th nearest
    assert image_image_recall(img, txt, ks=(1, 3, 4)) == {"recall@1": 75.0, "recall@3": 75.0, "recall@4": 100.0}
    assert image_image_recall(img, txt.flip(0), ks=(1,)) == {"recall@1": 0.0}  # partners reversed: each finds another's


def test_clip_run_from_a_pairs_csv_classifies_by_prompts(tmp_path):
    from replearn.cli.main import main
    from replearn.evaluate.protocol import evaluate

    rows = make_pairs(tmp_path)
    path = write_csv(tmp_path / "pairs.csv", [*rows, ["img/red1.png", "", "red"], ["img/gone.png", "a red x", "red"]])
    out = tmp_path / "run"
    args = ["--data", str(path), "--method", "clip", "--image-size", "16", "--width", "8", "--batch-size", "32",
            "--epochs", "3", "--precision", "32", "--knn-monitor", "false", "--out", str(out)]
    assert main(["pretrain", *args]) == 0
    skipped = {r["path"]: r["reason"] for r in csv.DictReader(open(out / "skipped.csv"))}
    assert set(skipped) == {"img/red1.png", "img/gone.png"}
    raw = torch.load(out / "text_encoder.pt", weights_only=True)
    assert raw["format"] == "replearn-text/1" and "red" in raw["words"]
    tok, _, _, spec = load_text_encoder(out)  # the tokeniser rebuilt from the run alone
    assert torch.equal(tok(["a red square"]), Tokenizer(raw["words"], spec["max_len"])(["a red square"]))

    r = evaluate(str(out), data=str(path), few_label=[2], seeds=[0], verbose=False)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["zero_shot"]["prompt"] == "a photo of a {label}" and set(saved["image_text"]) == {"recall@1", "recall@5"}
    assert saved["zero_shot"]["accuracy"] >= 60  # 4 classes: chance is 25%
    assert r["zero_shot"] == saved["zero_shot"]
    data = load_data(str(path), image_size=16)
    assert abs(zero_shot(out, data) - saved["zero_shot"]["accuracy"]) < 0.01
    assert zero_shot(out, data, prompt="{label}") > 25


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def _straight_and_resumed(tmp_path, path):
    """A 2-epoch clip run on ``path``, and the same run crashed after epoch 1 then resumed: the two
    run folders and their checkpoints' state dicts, compared exactly."""
    from replearn.train.run import pretrain

    opts = dict(data=str(path), method="clip", image_size=16, width=4, batch_size=16, epochs=2, precision="32",
                knn_monitor=False)
    straight = pretrain(out=str(tmp_path / "straight"), **opts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(out=str(tmp_path / "cut"), callbacks=[_StopAfterFirstEpoch()], **opts)
    resumed = pretrain(out=str(tmp_path / "cut"), resume=True)
    a = torch.load(straight / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(resumed / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    return straight, resumed, a


def test_clip_resumes_to_the_uninterrupted_run(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", make_pairs(tmp_path, per_class=16))
    straight, resumed, a = _straight_and_resumed(tmp_path, path)
    assert "method.logit_scale" in a and "method.words" in a
    ta, tb = (torch.load(r / "text_encoder.pt", weights_only=True) for r in (straight, resumed))
    assert ta["words"] == tb["words"]


def test_evaluate_takes_the_prompt_and_checks_it_first(tmp_path, capsys):
    from replearn.cli.main import main

    path = write_csv(tmp_path / "pairs.csv", make_pairs(tmp_path, per_class=16))
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(path), "--method", "clip", "--image-size", "16", "--width", "4",
                 "--batch-size", "16", "--epochs", "1", "--precision", "32", "--knn-monitor", "false",
                 "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--data", str(path), "--prompt", "a {label} thing", "--few-label", "2",
                 "--seeds", "0"]) == 0
    assert json.loads((out / "eval.json").read_text())["zero_shot"]["prompt"] == "a {label} thing"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(path), "--prompt", "a thing"]) == 2
    out_text, err = capsys.readouterr()
    assert "has no {label}" in err and "features of" not in out_text  # refused before any work


# ---------------------------------------------------------------- image-image pairs


def make_image_pairs(root, n=64, seed=0, size=16):
    """n pairs: a randomly coloured square at a random place on dark noise (img/a{i}.png) and its
    left-right mirror image (img/b{i}.png); rows image,image2,label of a pairs CSV."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        x, y = rng.integers(0, size - size // 2, 2)
        a[y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, 3)
        Image.fromarray(a).save(root / "img" / f"a{i}.png")
        Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(root / "img" / f"b{i}.png")
        rows.append([f"img/a{i}.png", f"img/b{i}.png", "left" if x < size // 4 else "right"])
    return rows


def test_image_pairs_csv_skips_rows_with_a_missing_or_broken_image_on_either_side(tmp_path):
    rows = make_image_pairs(tmp_path, n=4)
    for name in ("broken1.png", "broken2.png"):
        (tmp_path / "img" / name).write_text("not an image")
    absolute = str(tmp_path / "img" / "b3.png")
    bad = [["img/broken1.png", "img/b0.png", "left"], ["img/a1.png", "img/nowhere.png", "left"],
           ["img/a2.png", "img/broken2.png", "right"], ["", "img/b0.png", "left"]]
    path = write_csv(tmp_path / "pairs.csv", [rows[0], *bad, rows[1], rows[2], ["img/a3.png", absolute, rows[3][2]]],
                     header=("image", "image2", "label"))
    data = load_data(str(path), image_size=16)
    assert data.ids == ["img/a0.png", "img/a1.png", "img/a2.png", "img/a3.png"] and data.captions is None
    assert data.images.shape == data.partners.shape == (4, 3, 16, 16) and data.partners.dtype == torch.uint8
    assert data.labels.tolist() == [data.classes.index(r[2]) for r in rows]
    # the partners line up with their images: pair 2's pixels as written, and every pair a mirror
    a2 = np.array(Image.open(tmp_path / "img" / "a2.png"))
    assert torch.equal(data.images[2], torch.from_numpy(a2).permute(2, 0, 1))
    assert torch.equal(data.partners[2], torch.from_numpy(np.ascontiguousarray(a2[:, ::-1])).permute(2, 0, 1))
    assert torch.equal(data.partners, data.images.flip(-1))
    skipped = sorted(data.skipped)
    assert [p for p, _ in skipped] == ["img/broken1.png", "img/broken2.png", "img/nowhere.png", "pairs.csv row 6"]
    reasons = [r for _, r in skipped]
    assert reasons[0].startswith("row 3: image: not an image") and reasons[1].startswith("row 5: image2: not an image")
    assert reasons[2] == "row 4: image2: no such file" and reasons[3] == "row 6: image: no path"
    sub = data.subset([3, 0])  # partners follow a subset
    assert torch.equal(sub.partners, data.partners[[3, 0]])
    with pytest.raises(ValueError, match="image pairs"):
        concat(data, data)


def test_image_pairs_csv_errors_are_one_line(tmp_path):
    rows = make_image_pairs(tmp_path, n=2)
    both = write_csv(tmp_path / "both.csv", [[*rows[0][:2], "a cat"]], header=("image", "image2", "caption"))
    with pytest.raises(ReplearnError, match="both a caption and an image2 column") as e:
        load_data(str(both))
    assert "drop one of the two columns" in e.value.hint
    with pytest.raises(ReplearnError, match="no header row image,caption or image,image2"):
        load_data(str(write_csv(tmp_path / "plain.csv", rows, header=("a", "b", "label"))))
    none = write_csv(tmp_path / "none.csv", [["img/a0.png", "img/gone.png", ""]], header=("image", "image2", "label"))
    with pytest.raises(ReplearnError, match=r"no usable image pair .*\(1 row\(s\) skipped\)") as e:
        load_data(str(none))
    assert "image2: no such file" in e.value.hint
    (tmp_path / "img" / "broken.png").write_text("not an image")
    broken = write_csv(tmp_path / "broken.csv", [["img/a0.png", "img/broken.png", ""]], header=("image", "image2", "label"))
    with pytest.raises(ReplearnError, match="none of the 1 image files in the image2 column") as e:
        load_data(str(broken))
    assert e.value.hint.startswith("img/broken.png: not an image")
    fine = write_csv(tmp_path / "fine.csv", rows, header=("image", "image2", "label"))
    with pytest.raises(ReplearnError, match="image pairs must fit in memory") as e:
        load_data(str(fine), image_size=64, max_in_memory_bytes=2 * 2 * 3 * 32 * 32)
    assert "--image-size 32 or less" in e.value.hint


def test_npz_images2_are_partners(tmp_path):
    rng = np.random.default_rng(0)
    images, images2 = rng.integers(0, 256, (2, 5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "p.npz", images=images, images2=images2, labels=np.arange(5) % 2)
    data = load_data(str(tmp_path / "p.npz"))
    assert data.partners.shape == (5, 3, 8, 8) and torch.equal(data.partners, torch.from_numpy(images2).permute(0, 3, 1, 2))
    big = load_data(str(tmp_path / "p.npz"), image_size=16)  # resized like the images
    assert big.partners.shape == (5, 3, 16, 16) and not torch.equal(big.partners, big.images)
    np.savez(tmp_path / "bad.npz", images=images, images2=images2[:4])
    with pytest.raises(ReplearnError, match="images2 of shape .* do not match images"):
        load_data(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "both.npz", images=images, images2=images2, captions=np.array(["a"] * 5))
    with pytest.raises(ReplearnError, match="both captions and images2"):
        load_data(str(tmp_path / "both.npz"))


def _pair_method(shared):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8))
    data = ImageSet(ids=[str(i) for i in range(8)], labels=torch.full((8,), -1), name="pairs", channels=3, size=8,
                    images=images, partners=images.flip(-1), mean=(0.5,) * 3, std=(0.25,) * 3)
    method = METHODS.get("clip")(build_backbone("convnet", 3, 8, width=4), MethodOptions(proj_dim=6, args={"shared_tower": shared}))
    method.bind_data(data)
    return method, data


@pytest.mark.parametrize("shared", [False, True])
def test_both_image_towers_get_the_gradients_of_clip_loss(shared):
    """Separate towers: the partner goes through a freshly initialised copy of the backbone; shared: through
    the backbone itself. Every parameter's gradient equals clip_loss's on views drawn by hand, the
    partner's right after the image's from the same generator."""
    from replearn.views import recipe

    method, data = _pair_method(shared)
    assert method.text is None and (method.partner is None) == shared
    reference = copy.deepcopy(method)
    rec, index = recipe(method.views), torch.tensor([5, 1, 6, 2])
    views = method.make_views(data.images[index], rec, 8, data.mean, data.std, torch.Generator().manual_seed(3))
    method.training_step(views, index)[0].backward()

    g = torch.Generator().manual_seed(3)
    v1 = rec(data.images[index], 8, data.mean, data.std, g)
    v2 = rec(data.partners[index], 8, data.mean, data.std, g).contiguous(memory_format=torch.channels_last)
    r = reference
    other = r.image_proj(r.backbone(v2)) if shared else r.partner.proj(r.partner.backbone(v2))
    clip_loss(r.image_proj(r.backbone(v1)), other, r.logit_scale).backward()
    grads = dict(r.named_parameters())
    for name, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-4, rtol=1e-4, msg=name)  # float noise of layouts
    names = {n.split(".")[0] for n, _ in method.named_parameters()}
    assert names == ({"backbone", "image_proj", "logit_scale"} | (set() if shared else {"partner"}))
    if not shared:  # the second tower has its own initial weights, not a copy of the first's
        assert not torch.equal(method.partner.backbone[0].weight, method.backbone[0].weight)


def test_shared_tower_without_image_pairs_is_refused():
    method = METHODS.get("clip")(build_backbone("convnet", 1, 8, width=4), MethodOptions(args={"shared_tower": "true"}))
    with pytest.raises(ReplearnError, match="shared_tower applies to image pairs only"):
        method.bind_data(SimpleNamespace(name="pairs", captions=CAPTIONS, partners=None))


def test_clip_run_on_image_pairs_finds_each_images_partner(tmp_path):
    from replearn.cli.main import main
    from replearn.nn.partner import load_partner_encoder

    train = write_csv(tmp_path / "train" / "pairs.csv", make_image_pairs(tmp_path / "train", n=256, seed=0),
                      header=("image", "image2", "label"))
    test = write_csv(tmp_path / "test" / "pairs.csv", make_image_pairs(tmp_path / "test", n=64, seed=1),
                     header=("image", "image2", "label"))
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(train), "--method", "clip", "--image-size", "16", "--width", "8",
                 "--batch-size", "32", "--epochs", "12", "--precision", "32", "--knn-monitor", "false",
                 "--out", str(out)]) == 0
    assert not (out / "text_encoder.pt").exists()
    raw = torch.load(out / "partner_encoder.pt", weights_only=True, map_location="cpu")
    assert raw["format"] == "replearn-partner/1" and raw["spec"]["shared_tower"] is False
    _, spec = load_encoder(out)
    partner, proj, _, _ = load_partner_encoder(out, spec)
    torch.testing.assert_close(partner.state_dict()["0.weight"], raw["backbone"]["0.weight"])
    assert proj.weight.shape == (128, 64)  # proj_dim x the convnet's 8 * width features

    assert main(["evaluate", str(out), "--data", str(test), "--few-label", "2", "--seeds", "0"]) == 0
    saved = json.loads((out / "eval.json").read_text())
    assert "zero_shot" not in saved and set(saved["image_image"]) == {"recall@1", "recall@5"}
    assert saved["image_image"]["recall@1"] >= 25  # 64 candidates: chance is 1.6%
    assert saved["image_image"]["recall@5"] >= saved["image_image"]["recall@1"]


def test_clip_on_image_pairs_resumes_to_the_uninterrupted_run(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", make_image_pairs(tmp_path, n=64), header=("image", "image2", "label"))
    straight, resumed, a = _straight_and_resumed(tmp_path, path)
    assert "method.partner.backbone.0.weight" in a
    assert not any(k.startswith("method.text.") for k in a)
    pa, pb = (torch.load(r / "partner_encoder.pt", weights_only=True) for r in (straight, resumed))
    for k in pa["backbone"]:
        torch.testing.assert_close(pa["backbone"][k], pb["backbone"][k], atol=0, rtol=0, msg=k)
