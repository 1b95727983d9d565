"""The evaluation protocol of the benchmark: frozen features -> kNN, linear probe, few-label probes,
and retrieval among the test images of classes held out of training."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from replearn.config import EvaluateConfig, make_config, to_dict
from replearn.dist import default_device
from replearn.errors import ReplearnError
from replearn.evaluate.features import extract_features, raw_pixels
from replearn.evaluate.fewlabel import few_label_accuracy
from replearn.evaluate.knn import knn_accuracy
from replearn.evaluate.linear import linear_probe_predict
from replearn.evaluate.retrieval import parse_classes, retrieval_metrics
from replearn.fileio import atomic_write_text


def _features(run: str | None, encoder, cfg: EvaluateConfig, train, test) -> tuple[torch.Tensor, torch.Tensor, str]:
    if cfg.baseline == "raw":
        f = raw_pixels(train)
        return f, f if test is train else raw_pixels(test), "raw pixels"
    if cfg.baseline == "random":
        from lightning.fabric.utilities.seed import seed_everything

        from replearn.nn import build_backbone

        seed_everything(0, verbose=False)
        enc = build_backbone(cfg.backbone, train.channels, train.size, cfg.width).to(default_device())
        name = f"random-init {cfg.backbone}"
    else:
        enc, spec = encoder
        enc = enc.to(default_device())
        if spec["channels"] != train.channels or spec["image_size"] != train.size:
            raise ReplearnError(
                f"the encoder expects {spec['channels']}-channel {spec['image_size']}px images, "
                f"the data has {train.channels}-channel {train.size}px",
                "evaluate on data like the pretraining data (or pass --image-size when loading a folder)",
            )
        # evaluate with the pretraining data's normalisation, not the evaluation set's own
        train.mean = test.mean = tuple(spec["mean"])
        train.std = test.std = tuple(spec["std"])
        name = f"{spec['method']} {spec['backbone']} ({run})"
    f = extract_features(enc, train, cfg.batch_size, precision=cfg.precision)
    return f, f if test is train else extract_features(enc, test, cfg.batch_size, precision=cfg.precision), name


def _held_out_classes(run: str) -> list | None:
    """The classes a metric-learning run kept out of training (``held_out_classes`` in meta.json)."""
    p = Path(run)
    meta = (p if p.is_dir() else p.parent) / "meta.json"  # run folder, or its encoder.pt
    try:
        held = json.loads(meta.read_text()).get("held_out_classes")
    except (OSError, ValueError, AttributeError):
        return None
    return held if isinstance(held, list) and held else None


def _retrieval_items(spec: str | list, source: str, test, data: str) -> tuple[list[int], torch.Tensor]:
    """(class indices, bool mask of the test images in them); a ReplearnError when none can be scored."""
    classes = parse_classes(spec, test.classes)
    keep = torch.isin(test.labels, torch.tensor(classes))  # (N,) unlabelled (-1) never kept
    per_class = torch.bincount(test.labels[keep], minlength=classes[-1] + 1)[classes]
    if int(per_class.max()) < 2:  # no image, or none with a second of its class to find
        present = sorted(set(test.labels[test.labels >= 0].tolist()))
        raise ReplearnError(
            f"retrieval: the test split of {data} has {int(keep.sum())} labelled image(s) of classes "
            f"{classes} ({source}), too few to retrieve",
            f"its labelled classes are {', '.join(map(str, present)) or 'none'}",
        )
    return classes, keep


HOLD_OUT = 0.2  # the share of each class the probes are scored on when the data has no test split


@dataclass
class ProbeSets:
    """The labelled features the probes (kNN, linear, few-label) train and are scored on: ``sets``
    is (train features, train labels, test features, test labels); ``held_out`` when the test part
    was held out of a data source without a test split; ``unlabelled`` images were left out."""

    sets: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    held_out: bool
    unlabelled: int

    def summary(self) -> dict:
        return {"train": len(self.sets[1]), "test": len(self.sets[3]), "held_out": self.held_out,
                "unlabelled_left_out": self.unlabelled}

    def describe(self, data: str) -> str:
        n_train, n_test = len(self.sets[1]), len(self.sets[3])
        left = f"; {self.unlabelled} unlabelled image(s) left out" if self.unlabelled else ""
        if self.held_out:
            return (f"{data} has no test split: the probes train on {n_train} labelled images and are scored on "
                    f"{n_test} held out of them ({HOLD_OUT:.0%} of each class, seed 0){left}")
        return f"the probes train on {n_train} labelled images and are scored on {n_test}{left}"


def probe_sets(f_train: torch.Tensor, y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor, *,
               same: bool) -> ProbeSets:
    """The probes' labelled train and test features. ``same``: train and test are one set (a source
    without a test split), so ``HOLD_OUT`` of each class's labelled images (rounded, at least one of
    a class with two or more; seed 0) becomes the test part and the rest the train part: a probe is
    never scored on an image it was fit on. Unlabelled images (-1) are left out of both."""
    if same:
        labelled = torch.nonzero(y_train >= 0).squeeze(1)
        gen = torch.Generator().manual_seed(0)
        test_idx = []
        for c in torch.unique(y_train[labelled]).tolist():
            members = labelled[y_train[labelled] == c]
            n = len(members)
            k = max(1, round(HOLD_OUT * n)) if n >= 2 else 0
            test_idx.append(members[torch.randperm(n, generator=gen)[:k]])
        test_idx = torch.sort(torch.cat(test_idx)).values if test_idx else labelled[:0]
        is_test = torch.zeros(len(y_train), dtype=torch.bool)
        is_test[test_idx] = True
        train_idx = labelled[~is_test[labelled]]
        unlabelled = len(y_train) - len(labelled)
        sets = (f_train[train_idx], y_train[train_idx], f_train[test_idx], y_train[test_idx])
    else:
        tr, te = y_train >= 0, y_test >= 0
        unlabelled = int((~tr).sum()) + int((~te).sum())
        sets = (f_train[tr], y_train[tr], f_test[te], y_test[te])
    if len(sets[3]) == 0 or len(sets[1]) == 0:
        raise ReplearnError(
            f"too few labelled images to score a probe: {len(sets[1])} to train on, {len(sets[3])} to test on",
            "label at least two images of a class" if same else "label some images of the test split too",
        )
    return ProbeSets(sets, held_out=same, unlabelled=unlabelled)


def evaluate(run: str | None = None, config: EvaluateConfig | None = None, *, verbose: bool = True, **overrides) -> dict:
    """Evaluate a run's frozen encoder (or a baseline) and write ``eval.json``; returns the results.

    ``replearn.evaluate("runs/simclr", data="fashion-mnist")``, or
    ``replearn.evaluate(baseline="raw", out="runs/raw")``. Accuracies are test top-1 in percent.
    """
    from replearn.data import has_split, load_data

    cfg = make_config(EvaluateConfig, None, {**to_dict(config or EvaluateConfig()), **overrides})
    if cfg.baseline is None and run is None:
        raise ReplearnError("nothing to evaluate", "give a run folder, or --baseline raw|random")
    out = Path(cfg.out) if cfg.out else (Path(run) if run else None)
    if out is None:
        raise ReplearnError("a baseline needs --out", "e.g. --out runs/raw")
    t0 = time.perf_counter()
    encoder, image_size = None, None
    if run and cfg.baseline is None:
        from replearn.nn import load_encoder

        encoder = load_encoder(run)  # (module, spec): the data is loaded at the encoder's image size
        image_size = encoder[1]["image_size"]
    train = load_data(cfg.data, "train", image_size=image_size, labels_csv=cfg.labels_csv)
    if cfg.limit:
        train = train.subset(torch.arange(min(cfg.limit, len(train))))
    # a folder, an array file or a pairs CSV has no test split: one set, whose features serve both
    test = load_data(cfg.data, "test", image_size=image_size, labels_csv=cfg.labels_csv) if has_split(cfg.data) else train
    if not train.has_labels or not test.has_labels:
        raise ReplearnError(f"{cfg.data} has no labels to evaluate against", "use class sub-folders or --labels-csv")
    spec, source = cfg.retrieval_classes, "--retrieval-classes"
    if spec is None and run and cfg.baseline is None:
        spec, source = _held_out_classes(run), "held_out_classes of the run's meta.json"
    retrieval = _retrieval_items(spec, source, test, cfg.data) if spec is not None else None  # before the slow part
    if "{label}" not in cfg.prompt:  # checked before the slow part too (it only matters for a clip run)
        raise ReplearnError(f"the prompt {cfg.prompt!r} has no {{label}}", "write e.g. --prompt 'a photo of a {label}'")
    say = (lambda msg: print(msg, flush=True)) if verbose else (lambda msg: None)  # noqa: E731
    sizes = f"{len(train)} images" if test is train else f"{len(train)} train and {len(test)} test images"
    say(f"evaluating on {cfg.data}: features of {sizes} ...")
    f_train, f_test, name = _features(run, encoder, cfg, train, test)
    t_feat = time.perf_counter()
    probes = probe_sets(f_train, train.labels, f_test, test.labels, same=test is train)
    fp_train, yp_train, fp_test, yp_test = probes.sets
    say(probes.describe(cfg.data))
    say(f"kNN (k={cfg.knn_k}) ...")
    if cfg.knn_k >= len(yp_train):
        say(f"note: k={cfg.knn_k} is at least the {len(yp_train)} training images, so every one of them votes; "
            "a smaller --knn-k suits so few")
    dev = default_device()  # the kNN's products on the GPU when there is one
    knn = knn_accuracy(fp_train.to(dev), yp_train, fp_test.to(dev), yp_test, k=cfg.knn_k,
                       temperature=cfg.knn_temperature)
    say("linear probe (C chosen on a 10% train hold-out) ...")
    linear_pred, linear_C = linear_probe_predict(fp_train, yp_train, fp_test, solver=cfg.probe)
    linear = 100.0 * float(np.mean(linear_pred == yp_test.numpy()))
    say(f"few-label probes ({', '.join(str(n) for n in cfg.few_label)} per class, seeds {cfg.seeds}) ...")
    result = {
        "knn": round(knn, 2),
        "linear": round(linear, 2),
        "few_label": {},
        "data": cfg.data,
        "encoder": name,
        "linear_C": linear_C,
        "probe": cfg.probe,  # the linear probes' solver
        "precision": cfg.precision,  # of the encoder pass
        "probe_split": probes.summary(),
        "classes": class_summary(torch.from_numpy(linear_pred), yp_test, test.classes, "linear probe"),
    }
    present, counts = torch.unique(yp_train, return_counts=True)
    n_classes, fewest = len(present), int(counts.min())
    for per_class in cfg.few_label:
        if per_class > fewest:  # a budget the labels cannot fill: said and recorded, the rest still runs
            c = int(present[counts.argmin()])
            why = f"class {class_names(test.classes, c + 1)[c]} has {fewest} labelled training images"
            say(f"few-label probe with {per_class} per class skipped: {why}")
            result.setdefault("few_label_skipped", {})[str(per_class)] = why
            continue
        r = few_label_accuracy(fp_train, yp_train, fp_test, yp_test, per_class=per_class, seeds=tuple(cfg.seeds),
                               solver=cfg.probe)
        result["few_label"][str(per_class * n_classes)] = {k: round(r[k], 2) for k in ("mean", "min", "max")}
    if retrieval is not None:
        classes, keep = retrieval
        say(f"retrieval among the {int(keep.sum())} test images of classes {classes} ...")
        names = [test.classes[c] if test.classes and c < len(test.classes) else str(c) for c in classes]
        r = retrieval_metrics(f_test[keep], test.labels[keep])
        result["retrieval"] = {"classes": classes, "class_names": names, "split": "test", **r}
    if run and cfg.baseline is None and (Path(run) / "classifier.pt").exists():  # a semi-supervised run
        from replearn.evaluate.predict import classifier_predictions

        say("the run's classifier on the test images ...")
        pred, conf = classifier_predictions(run, test, cfg.batch_size)
        y_test = test.labels
        known = y_test >= 0
        result["accuracy"] = round(100.0 * float((pred[known] == y_test[known]).float().mean()), 2)
        result["classifier"] = {
            **class_summary(pred, y_test, test.classes, "classifier"),
            "confidence": confidence_histogram(conf[known], pred[known] == y_test[known]),
        }
    folder = None if run is None else Path(run) if Path(run).is_dir() else Path(run).parent  # or its encoder.pt
    if folder is not None and cfg.baseline is None and (folder / "text_encoder.pt").exists():  # a clip run
        from replearn.evaluate.zeroshot import clip_metrics

        say("zero-shot classification by prompts" + (", image->text retrieval ..." if test.captions else " ..."))
        result.update(clip_metrics(folder, test, prompt=cfg.prompt, batch_size=cfg.batch_size))
        say(f"zero-shot top-1 {result['zero_shot']['accuracy']:.1f}%"
            + (f", image->text R@1 {result['image_text']['recall@1']:.1f}%" if "image_text" in result else ""))
    elif folder is not None and cfg.baseline is None and (folder / "partner_encoder.pt").exists():  # clip on image pairs
        from replearn.evaluate.zeroshot import clip_metrics

        if test.partners is None:
            say(f"{cfg.data} has no second images: no image->image retrieval (no text tower: no zero-shot)")
        else:
            say("image->image retrieval of each image's partner ...")
            result.update(clip_metrics(folder, test, batch_size=cfg.batch_size))
            say(f"image->image R@1 {result['image_image']['recall@1']:.1f}%")
    if train.factors is not None:  # data with known generating factors (shapes): how disentangled
        from replearn.evaluate.disentangle import disentanglement

        say(f"disentanglement (MIG, FactorVAE score) over the {len(train)} training images' factors ...")
        result["disentanglement"] = disentanglement(f_train, train.factors, train.factor_names, seed=0)
        say(f"MIG {result['disentanglement']['mig']['mig']:.3f}, "
            f"FactorVAE score {result['disentanglement']['factorvae']['score']:.3f}")
    result["seconds"] = {"features": round(t_feat - t0, 1), "total": round(time.perf_counter() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", out / "eval.json")
    if verbose:
        print(format_table([result]))
        print(f"wrote {out / 'eval.json'}")
    return result


def class_names(classes: list[str] | None, *at_least: int) -> list[str]:
    """The data's class names, padded with "3", "4", ... to at least each of ``at_least`` names."""
    n = max(len(classes or []), *at_least, 0)
    return [classes[i] if classes and i < len(classes) else str(i) for i in range(n)]


def class_summary(pred: torch.Tensor, truth: torch.Tensor, classes: list[str] | None, source: str) -> dict:
    """eval.json's per-class view of predictions on the labelled test images (truth >= 0):
    ``names``, ``source`` (what predicted), ``per_class`` test top-1 in percent (None for a class
    without test images), ``support`` (test images per class) and ``confusion`` (counts; row: true
    class, column: predicted class; a prediction of "unlabelled" (-1) counts as wrong, in no column)."""
    known = truth >= 0
    pred, truth = pred[known].long(), truth[known].long()
    names = class_names(classes, int(pred.max()) + 1 if len(pred) else 0, int(truth.max()) + 1 if len(truth) else 0)
    n = len(names)
    support = torch.bincount(truth, minlength=n)
    hit = torch.bincount(truth[pred == truth], minlength=n)
    per_class = [round(100.0 * int(hit[i]) / int(support[i]), 2) if support[i] else None for i in range(n)]
    some = pred >= 0
    confusion = torch.bincount(truth[some] * n + pred[some], minlength=n * n).reshape(n, n)
    return {"names": names, "source": source, "per_class": per_class, "support": support.tolist(),
            "confusion": confusion.tolist()}


def confidence_histogram(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 20) -> dict:
    """Counts of the top-class probability in ``bins`` equal bins of [0, 1] (``edges``, bins + 1 of
    them), for the correct and the wrong predictions apart."""
    b = (confidence.float() * bins).long().clamp(0, bins - 1)  # a probability of exactly 1 joins the top bin
    return {
        "edges": [round(i / bins, 4) for i in range(bins + 1)],
        "correct": torch.bincount(b[correct], minlength=bins).tolist(),
        "wrong": torch.bincount(b[~correct], minlength=bins).tolist(),
    }


def table_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(column heads, one row of cells per result) of ``format_table``: kNN, linear and each
    few-label mean [min, max]; the classifier's accuracy, retrieval's Recall@1 and MAP@R, and MIG
    and the FactorVAE score, when any result has them."""
    sizes = sorted({k for r in results for k in r["few_label"]}, key=int)
    clf = any("accuracy" in r for r in results)  # semi-supervised runs: the classifier itself
    ret = any("retrieval" in r for r in results)
    head = ["encoder", *(["classifier"] if clf else []), "kNN", "linear"] + [f"{s} labels" for s in sizes]
    head += ["R@1", "MAP@R"] if ret else []
    dis = any("disentanglement" in r for r in results)
    head += ["MIG", "FactorVAE"] if dis else []
    rows = []
    for r in results:
        acc = [f"{r['accuracy']:.1f}" if "accuracy" in r else "-"] if clf else []
        row = [r["encoder"], *acc, f"{r['knn']:.1f}", f"{r['linear']:.1f}"]
        for s in sizes:
            f = r["few_label"].get(s)
            row.append(f"{f['mean']:.1f} [{f['min']:.1f}, {f['max']:.1f}]" if f else "-")
        if ret:
            t = r.get("retrieval")
            row += [f"{t['recall@1']:.1f}", f"{t['map@r']:.1f}"] if t else ["-", "-"]
        if dis:
            d = r.get("disentanglement")
            row += [f"{d['mig']['mig']:.3f}", f"{d['factorvae']['score']:.3f}"] if d else ["-", "-"]
        rows.append(row)
    return head, rows


def format_table(results: list[dict]) -> str:
    """A plain-text table of ``table_rows``: one row per result."""
    head, rows = table_rows(results)
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths, strict=True))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])
