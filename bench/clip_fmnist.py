"""CLIP on Fashion-MNIST with template captions: zero-shot accuracy by prompts and image->text Recall@1.

Builds the paired set in ``--out``/data (``train.npz``, ``test.npz``: each image with a caption from
seeded templates naming its class among other words, e.g. "a worn Sneaker on a wooden box"; labels as
class names, so prompts can be built from them), trains ``replearn pretrain --method clip`` on the
train set and runs ``replearn evaluate`` on the test set, whose eval.json gets ``zero_shot``
(prompt "a photo of a {label}", never a caption template) and ``image_text`` (Recall@1, @5).

    python bench/clip_fmnist.py --out runs/clip-fmnist                 # the demo budget (~4 min, 2 cores)
    python bench/clip_fmnist.py --out /tmp/clip --epochs 1 --limit 4096   # smoke check

Image->text Recall@1 is bounded well below 100%: the template's other words (adjective, place) are
not in the image, so an image can at best retrieve a caption of its class. The script prints that
bound (``ceiling``: the share of test images whose caption is the most frequent caption of their
class) beside the figure. Nothing is downloaded: the images come from ``load_data("fashion-mnist")``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import _run, machine  # noqa: E402

TEMPLATES = [
    "a {adj} {label} on a {place}",
    "a photo of my {adj} {label}",
    "this {label} looks {adj}",
    "{label} for sale, {adj}, {place} in the background",
    "the {adj} {label} lies on the {place}",
    "picture of a {label} next to a {place}",
]
ADJECTIVES = ["red", "blue", "black", "old", "new", "cheap", "cosy", "worn", "striped", "plain", "large", "small"]
PLACES = ["table", "bed", "floor", "chair", "shelf", "white wall", "wooden box", "grey sofa"]


def captions_for(labels: np.ndarray, classes: list[str], seed: int) -> np.ndarray:
    """One caption per image: a random template, adjective and place around its class name."""
    rng = np.random.default_rng(seed)
    t, a, p = (rng.integers(len(x), size=len(labels)) for x in (TEMPLATES, ADJECTIVES, PLACES))
    return np.array([TEMPLATES[t[i]].format(adj=ADJECTIVES[a[i]], label=classes[y], place=PLACES[p[i]])
                     for i, y in enumerate(labels.tolist())])


def build(folder: Path, seed: int, limit: int | None) -> dict[str, Path]:
    """train.npz and test.npz (images, labels as class names, captions) in ``folder``."""
    from replearn.data import load_data

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, split in enumerate(("train", "test")):
        data = load_data("fashion-mnist", split)
        n = min(limit, len(data)) if limit and split == "train" else len(data)
        labels = data.labels[:n].numpy()
        files[split] = folder / f"{split}.npz"
        np.savez(files[split], images=data.images[:n, 0].numpy(), labels=np.array(data.classes)[labels],
                 captions=captions_for(labels, data.classes, seed + i))
    return files


def ceiling(test: Path) -> float:
    """Percent of test images whose caption is the most frequent caption of their class: the best
    Recall@1 an image that shows only its class can reach (ties of equal captions count alike)."""
    z = np.load(test)
    best = {y: Counter(z["captions"][z["labels"] == y].tolist()).most_common(1)[0][1] for y in set(z["labels"].tolist())}
    return 100.0 * sum(best.values()) / len(z["labels"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/clip-fmnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", default="", help="more 'replearn pretrain' options, e.g. '--method-args text_layers=2'")
    args = p.parse_args(argv)
    out = Path(args.out)
    files = build(out / "data", args.seed, args.limit)
    run = out / "run"
    train = [sys.executable, "-m", "replearn", "pretrain", "--data", str(files["train"]), "--method", "clip",
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
             "--seed", str(args.seed), "--knn-monitor", "false", "--out", str(run), *args.extra.split()]
    evaluate = [sys.executable, "-m", "replearn", "evaluate", str(run), "--data", str(files["test"]),
                "--few-label", "4", "--seeds", "0"]
    print(f"{machine()}\n{' '.join(train[1:])}", flush=True)
    rc, t_train = _run(train, out / "pretrain.log", args.threads)
    if rc != 0:
        print(f"pretraining failed (exit {rc}); see {out / 'pretrain.log'}")
        return rc
    rc, t_eval = _run(evaluate, out / "evaluate.log", args.threads)
    if rc != 0:
        print(f"evaluation failed (exit {rc}); see {out / 'evaluate.log'}")
        return rc
    r = json.loads((run / "eval.json").read_text())
    result = {
        "zero_shot": r["zero_shot"]["accuracy"], "prompt": r["zero_shot"]["prompt"],
        "image_text_recall@1": r["image_text"]["recall@1"], "image_text_recall@5": r["image_text"]["recall@5"],
        "recall@1_ceiling": round(ceiling(files["test"]), 2), "knn": r["knn"], "linear": r["linear"],
        "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1), "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads, "date": time.strftime("%Y-%m-%d"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"zero-shot top-1 {result['zero_shot']:.1f}% (10 classes, chance 10%; prompt '{result['prompt']}')")
    print(f"image->text R@1 {result['image_text_recall@1']:.2f}% (ceiling {result['recall@1_ceiling']:.2f}%), "
          f"R@5 {result['image_text_recall@5']:.2f}%; kNN {result['knn']:.1f}%, linear {result['linear']:.1f}%")
    print(f"train {t_train:.0f} s, evaluate {t_eval:.0f} s; wrote {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
