"""A semi-supervised run's classifier applied to data: class probabilities, test accuracy, a CSV of
predictions."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from replearn.config import PredictConfig, make_config, to_dict
from replearn.data.imageset import ImageSet
from replearn.errors import ReplearnError
from replearn.evaluate.features import extract_features
from replearn.fileio import atomic_write_text


def class_probabilities(net: torch.nn.Module, data: ImageSet, spec: dict, batch_size: int = 512) -> torch.Tensor:
    """(N, K) softmax of the classifier on the evaluation view, normalised as its training data was."""
    if data.channels != spec["channels"] or data.size != spec["image_size"]:
        raise ReplearnError(
            f"the classifier takes {spec['channels']}-channel {spec['image_size']}-px images, "
            f"{data.name} has {data.channels}-channel {data.size}-px ones",
            "give data like the training data",
        )
    data.mean, data.std = tuple(spec["mean"]), tuple(spec["std"])
    return torch.softmax(extract_features(net, data, batch_size).float(), dim=1)


def classifier_predictions(run: str, test: ImageSet, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class int64 (N,) as an index of the data's classes, confidence float (N,): the top
    softmax probability) of the run's classifier on ``test``, its class names matched to the data's."""
    from replearn.semisup.base import load_classifier

    net, spec, classes = load_classifier(run)
    net = net.to("cuda" if torch.cuda.is_available() else "cpu")
    conf, pred = class_probabilities(net, test, spec, batch_size).max(1)
    names = test.classes or [str(i) for i in range(int(test.labels.max()) + 1)]
    index = {c: i for i, c in enumerate(names)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ReplearnError(f"the classifier's class {missing[0]!r} is not a class of {test.name}")
    return torch.tensor([index[c] for c in classes])[pred], conf  # classifier class -> data class index


def classifier_accuracy(run: str, test: ImageSet, batch_size: int = 512) -> float:
    """Test top-1 (percent) of the run's classifier, its class names matched to the data's."""
    as_data, _ = classifier_predictions(run, test, batch_size)
    known = test.labels >= 0
    return 100.0 * float((as_data[known] == test.labels[known]).float().mean())


def predict(run: str, config: PredictConfig | None = None, **overrides) -> Path:
    """Write ``path,label,confidence`` for every usable image of ``data``; images that could not be
    read are listed (printed, and in ``<out stem>.skipped.csv``) instead of failing the call.

    ``replearn.predict("runs/fixmatch", data="./new_images", out="predictions.csv")``."""
    from replearn.data import load_data
    from replearn.semisup.base import load_classifier

    cfg = make_config(PredictConfig, None, {**to_dict(config or PredictConfig()), **overrides})
    out = Path(cfg.out)
    net, spec, classes = load_classifier(run)
    net = net.to("cuda" if torch.cuda.is_available() else "cpu")
    data = load_data(cfg.data, cfg.split, image_size=spec["image_size"])
    if cfg.limit:
        data = data.subset(torch.arange(min(cfg.limit, len(data))))
    probs = class_probabilities(net, data, spec, cfg.batch_size)
    conf, pred = probs.max(1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "confidence"])
    w.writerows([i, classes[c], f"{p:.4f}"] for i, c, p in zip(data.ids, pred.tolist(), conf.tolist(), strict=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(buf.getvalue(), out)
    print(f"wrote {len(data)} predictions to {out}")
    if data.skipped:
        side = out.with_name(out.stem + ".skipped.csv")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(data.skipped)
        atomic_write_text(buf.getvalue(), side)
        shown = ", ".join(Path(p).name for p, _ in data.skipped[:3]) + (" ..." if len(data.skipped) > 3 else "")
        print(f"skipped {len(data.skipped)} unreadable image(s) ({shown}); the list is in {side}")
    return out
