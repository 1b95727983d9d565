"""``report``: one self-contained HTML page about a run folder, from what the run wrote (config,
meta, metrics, eval.json, pictures, skipped files) and a map of its encoder's embeddings.

Every file but config.yaml is optional: a section whose file is missing says so, and what to run
to fill it, instead of failing."""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from replearn.config import ReportConfig, make_config, to_dict
from replearn.errors import ReplearnError
from replearn.fileio import atomic_write_text
from replearn.report.charts import fmt, line_chart, stacked_histogram
from replearn.report.maps import MapSample, map_sample, map_section, neighbours_section
from replearn.report.page import Raw, data_uri, esc, page, table, todo

SMALL_DATA = 10_000  # train + test images up to which a missing raw-pixel baseline is computed here
PICTURES = {
    "reconstructions": "Reconstructions: the top row is the input, the bottom row its reconstruction",
    "samples": "Samples drawn from the prior",
    "traversals": "Latent traversals: each row changes one latent (or code), each column one value of it",
}
LEGEND_HEADS = {"row": "row", "latent": "latent", "mean_kl_nats": "mean KL (nats)", "code": "code", "values": "values"}
CURVE_TITLES = {  # short: a title shares its line with the last value
    "loss_x": "labelled loss (loss_x)", "loss_u": "unlabelled loss (loss_u)", "mask": "mask: share over threshold",
    "pseudo_acc": "pseudo-label accuracy", "pseudo_rate": "share pseudo-labelled", "feature_spread": "feature spread",
    "embedding_spread": "embedding spread",
}


class Run:
    """What a run folder holds, read once; ``problems`` lists optional files that could not be read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ReplearnError(f"no run folder at {self.path}", "give a folder written by replearn pretrain, semisup or metric")
        if not self.path.is_dir() or not (self.path / "config.yaml").is_file():
            raise ReplearnError(
                f"{self.path} is not a run folder: it has no config.yaml",
                "give a folder written by replearn pretrain, semisup or metric, e.g. runs/simclr",
            )
        try:
            config = yaml.safe_load((self.path / "config.yaml").read_text())
        except yaml.YAMLError as e:
            raise ReplearnError(f"{self.path / 'config.yaml'} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise ReplearnError(f"{self.path / 'config.yaml'} does not hold a mapping of option: value")
        self.config: dict = config
        self.problems: list[str] = []
        self.meta: dict = self.read_json("meta.json") or {}
        self.eval: dict | None = self.read_json("eval.json")

    def read_json(self, name: str) -> dict | None:
        """The JSON object in the run's file ``name``, or None (noted in ``problems`` when unreadable)."""
        p = self.path / name
        if not p.is_file():
            return None
        try:
            value = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            self.problems.append(f"{name} cannot be read ({str(e).splitlines()[0]})")
            return None
        return value if isinstance(value, dict) else None

    def read_csv(self, name: str) -> list[dict] | None:
        p = self.path / name
        if not p.is_file():
            return None
        try:
            with p.open(newline="") as f:
                return list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            self.problems.append(f"{name} cannot be read ({e})")
            return None

    @property
    def data(self) -> str:
        return str(self.config.get("data", "DATA"))

    @property
    def semisup(self) -> bool:
        return (self.path / "classifier.pt").is_file()

    def evaluate_command(self) -> str:
        data = (self.eval or {}).get("data") or self.data
        return f"replearn evaluate {self.path} --data {data}"


def report(run: str | Path, config: ReportConfig | None = None, **overrides) -> Path:
    """Write a self-contained HTML report of a run folder; returns its path.

    ``replearn.report.report("runs/simclr")`` writes ``runs/simclr/report.html``: header (method,
    data, commit, training time), training curves, the eval.json table beside a raw-pixel baseline,
    a t-SNE map of the encoder's embeddings with thumbnails, nearest-neighbour grids, per-class
    accuracy and confusion, a generative run's pictures, the skipped files and the config. It
    opens from disk with no network: images are inlined, charts are inline SVG.
    """
    cfg = make_config(ReportConfig, None, {**to_dict(config or ReportConfig()), **overrides})
    r = Run(run)
    out = Path(cfg.out) if cfg.out else r.path / "report.html"
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    say(f"report of {r.path}")
    encoder, note = _encoder(r)
    sample, map_note = _map(r, encoder, cfg, say) if encoder else (None, note)
    sections = [
        ("curves", "Training curves", curves_section(r)),
        ("evaluation", "Evaluation", evaluation_section(r, say)),
        ("map", "Map of the embeddings", map_section(sample, map_note)),
        ("neighbours", "Nearest neighbours", neighbours_section(sample, map_note)),
        ("classes", "Per-class accuracy", classes_section(r)),
        ("pictures", "Pictures", pictures_section(r)),
        ("skipped", "Skipped files", skipped_section(r)),
        ("config", "Config", config_section(r)),
    ]
    sprite = f".sprite{{background-image:url({data_uri(sample.sprite_png)})}}" if sample else ""
    html = page(f"replearn report: {r.path.name}", header(r, encoder[1] if encoder else None), sections, head_extra=sprite)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(html, out)
    say(f"wrote {out}")
    return out


# -- header and curves --------------------------------------------------------------------------
def _duration(seconds) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if h else f"{m} min {s} s" if m else f"{s} s"


def header(r: Run, spec: dict | None) -> str:
    """The run's name and folder, and the facts of its config, meta.json and encoder ``spec``."""
    c, m = r.config, r.meta
    backbone = (spec or c).get("backbone") or "-"
    width = (spec or c).get("width")
    commit = m.get("git_commit")
    facts = [
        ("method", c.get("method", "-")),
        ("backbone", f"{backbone}, width {width}" if width else backbone),
        ("data", r.data + (f" ({m['images']} images)" if m.get("images") else "")),
        ("started", m.get("started", "-")),
        ("commit", Raw(f'<code title="{esc(commit)}">{esc(commit[:10])}</code>') if commit else "-"),
        ("training time", _duration(m.get("train_seconds"))),
        ("speed", f"{m['views_per_second']:,.0f} views/s" if m.get("views_per_second")
         else f"{m['images_per_second']:,.0f} images/s" if m.get("images_per_second") else "-"),
        ("replearn", m.get("replearn_version", "-")),
    ]
    if m.get("labelled"):
        facts.insert(3, ("labelled images", m["labelled"]))
    if m.get("resumed_at"):
        facts.append(("resumed", ", ".join(m["resumed_at"])))
    facts.append(("report written", datetime.now(UTC).isoformat(timespec="seconds")))
    cells = "".join(f"<div><b>{esc(k)}</b>{v if isinstance(v, Raw) else esc(v)}</div>" for k, v in facts)
    notes = "".join(f'<p class="todo">{esc(p)}</p>' for p in r.problems)
    if not (r.path / "meta.json").is_file():
        notes += todo("no meta.json in the run folder: date, commit and training time are unknown")
    return f'<h1>{esc(r.path.name)}</h1><div class="path">{esc(r.path.resolve())}</div><div class="facts">{cells}</div>{notes}'


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        try:
            xv, yv = float(row.get(x) or "nan"), float(row.get(y) or "nan")
        except ValueError:
            continue
        if np.isfinite(xv) and np.isfinite(yv):
            xs.append(xv + (1 if x == "epoch" else 0))  # epochs counted from 1
            ys.append(yv)
    return xs, ys


def curves_section(r: Run) -> str:
    rows = r.read_csv("metrics.csv")
    if not rows:
        return todo("no metrics.csv in the run folder: nothing was logged")

    def chart(x: str, y: str, title: str, missing: str | None = None) -> str:
        xs, ys = _series(rows, x, y)
        if xs:
            return line_chart(xs, ys, title, "epoch" if x == "epoch" else "step")
        return f'<div class="missing">{esc(missing)}</div>' if missing else ""

    known = {"step", "epoch", "loss_step", "loss_epoch", "lr", "knn_monitor"}
    charts = [
        chart("step", "loss_step", "loss per step", "loss per step: not logged"),
        chart("epoch", "loss_epoch", "loss per epoch (mean)", "loss per epoch: not logged"),
        chart("step", "lr", "learning rate", "learning rate: not logged"),
        chart("epoch", "knn_monitor", "kNN monitor: top-1 %"),
    ]
    others = sorted({k for row in rows for k in row} - known)
    charts += [chart("step", k, CURVE_TITLES.get(k, k)) for k in others]
    steps = max(_series(rows, "step", "step")[0], default=0)
    return f'<p class="note">{len(rows)} rows of metrics.csv, up to step {fmt(steps)}.</p><div class="charts">{"".join(charts)}</div>'


# -- evaluation ---------------------------------------------------------------------------------
def find_baseline(folder: Path, data: str, levels: int = 3) -> Path | None:
    """The eval.json of a raw-pixel baseline on ``data`` near a run folder: ``<run>-raw`` first, then
    any folder beside the run, then beside each of its parents (up to ``levels`` up)."""
    folder = folder.resolve()
    for base in list(folder.parents)[:levels]:
        try:
            near = [base / f"{folder.name}-raw", *sorted(p for p in base.iterdir() if p.is_dir())]
        except OSError:
            continue
        for d in near:
            p = d / "eval.json"
            if d == folder or not p.is_file():
                continue
            try:
                e = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(e, dict) and e.get("encoder") == "raw pixels" and e.get("data") == data \
                    and {"knn", "linear", "few_label"} <= set(e):
                return p
    return None


def _raw_baseline_now(data: str, say: Callable[[str], None]) -> dict | None:
    """kNN and linear probe on raw pixels of ``data`` when it has at most ``SMALL_DATA`` images
    (train + test), else None."""
    from replearn.data import load_data
    from replearn.evaluate.protocol import evaluate

    try:
        n = len(load_data(data, "train")) + len(load_data(data, "test"))
        if n > SMALL_DATA:
            return None
        say(f"raw-pixel baseline on {data} (kNN, linear probe) ...")
        with tempfile.TemporaryDirectory() as tmp:
            return evaluate(baseline="raw", data=data, out=tmp, few_label=[], verbose=False)
    except ReplearnError:
        return None


def evaluation_section(r: Run, say: Callable[[str], None]) -> str:
    from replearn.evaluate.protocol import table_rows

    if r.eval is None:
        return todo(f"No eval.json yet: run <code>{esc(r.evaluate_command())}</code> to fill this.")
    e = r.eval
    data = e.get("data", r.data)
    results, source = [e], ""
    found = find_baseline(r.path, data)
    if found is not None:
        results.append(json.loads(found.read_text()))
        source = f'<p class="note">Baseline: <code>{esc(found)}</code>.</p>'
    else:
        raw = _raw_baseline_now(data, say)
        if raw is not None:
            results.append({**raw, "encoder": "raw pixels (computed for this report)"})
            source = '<p class="note">Baseline: raw pixels, kNN and linear probe computed for this report.</p>'
        else:
            cmd = f"replearn evaluate --baseline raw --data {data} --out {r.path}-raw"
            source = todo(f"No raw-pixel baseline found beside the run: <code>{esc(cmd)}</code> makes one.")
    try:
        head, rows = table_rows(results)
    except (KeyError, TypeError) as err:
        return todo(f"eval.json lacks {esc(err)}: run <code>{esc(r.evaluate_command())}</code> again.")
    parts = [table(head, rows, ["this", *[""] * (len(rows) - 1)]), source,
             f'<p class="note">Test top-1 in percent on {esc(data)}. kNN: a similarity-weighted vote of the most '
             "cosine-similar train images; linear: logistic regression on standardised features; <i>N labels</i>: "
             "the linear probe trained on N labelled images, mean [min, max] over seeds.</p>"]
    extra = [[k.replace("_", " "), ", ".join(f"{n} {fmt(v)}" for n, v in e[k].items() if isinstance(v, int | float))]
             for k in ("zero_shot", "image_text", "image_image") if isinstance(e.get(k), dict)]
    if extra:
        parts.append(table(["also", "result"], extra))
    dis = e.get("disentanglement")
    if isinstance(dis, dict) and isinstance(dis.get("mig", {}).get("per_factor_by_name"), dict):
        mig = dis["mig"]
        rows = [[f, fmt(v), mig.get("top_latent_by_name", {}).get(f, "-")] for f, v in mig["per_factor_by_name"].items()]
        parts.append("<h3>Disentanglement by factor</h3>" + table(["factor", "MIG", "most informative latent"], rows))
    parts.append(f"<details><summary>eval.json as written</summary><pre>{esc(json.dumps(e, indent=1))}</pre></details>")
    return "".join(parts)


# -- map and neighbours -------------------------------------------------------------------------
def _encoder(r: Run) -> tuple[tuple | None, str]:
    """((encoder, spec), "") from the run's encoder.pt, or (None, why not)."""
    from replearn.nn import load_encoder

    if not (r.path / "encoder.pt").is_file():
        return None, "the run has no encoder.pt (no epoch finished), so there is nothing to embed"
    try:
        return load_encoder(r.path), ""
    except Exception as e:  # noqa: BLE001 - a damaged or foreign encoder.pt is a note, not a failed report
        return None, f"encoder.pt cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def _map(r: Run, encoder: tuple, cfg: ReportConfig, say: Callable[[str], None]) -> tuple[MapSample | None, str]:
    """(the map's sample, "") or (None, why there is none). An explicit ``cfg.data`` that cannot be
    loaded is the user's error; the run's own data that is gone is a note."""
    from replearn.data import load_data

    encoder, spec = encoder
    own = cfg.data is None
    data = r.data if own else cfg.data
    labels_csv = r.config.get("labels_csv") if own else None
    try:
        images = load_data(data, "test", image_size=spec["image_size"], labels_csv=labels_csv)
        return map_sample(encoder, spec, images, cfg.map_points, cfg.batch_size, say), ""
    except ReplearnError as e:
        if not own:
            raise
        return None, f"the run's data {data} cannot be used here ({e}); give another with --data"


# -- classes ------------------------------------------------------------------------------------
def _per_class(c: dict) -> str:
    rows = []
    for name, acc, n in zip(c["names"], c["per_class"], c.get("support", [None] * len(c["names"])), strict=True):
        bar = Raw(f'<span class="bar" style="width:{acc * 1.2:.0f}px"></span>') if acc is not None else ""
        rows.append([name, "-" if n is None else n, "-" if acc is None else f"{acc:.1f}", bar])
    return table(["class", "test images", "top-1 %", ""], rows)


def _confusion(c: dict) -> str:
    m = np.asarray(c["confusion"], dtype=np.int64)
    totals = m.sum(1)
    head = Raw('<th>true \\ predicted</th>' + "".join(f'<th class="pred" title="{esc(n)}">{esc(n)}</th>' for n in c["names"]))
    body = []
    for i, name in enumerate(c["names"]):
        cells = []
        for j, v in enumerate(m[i]):
            share = v / totals[i] if totals[i] else 0.0
            hue, alpha = ("26,127,55", share) if i == j else ("198,40,40", min(1.0, 3 * share))  # confusions show early
            ink = "#fff" if alpha > 0.55 else "inherit"
            cells.append(f'<td style="background:rgba({hue},{alpha:.3f});color:{ink}" title="{esc(name)} as '
                         f'{esc(c["names"][j])}: {v}">{v or ""}</td>')
        body.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f'<table class="confusion"><tr>{head}</tr>{"".join(body)}</table>'


def classes_section(r: Run) -> str:
    if r.eval is None:
        return todo(f"No eval.json yet: run <code>{esc(r.evaluate_command())}</code> to fill this.")
    parts = []
    clf = r.eval.get("classifier")
    if isinstance(clf, dict):
        parts.append(f"<h3>The run's classifier: test top-1 {r.eval.get('accuracy', float('nan')):.1f}%</h3>")
        parts.append(f'<div class="row">{_per_class(clf)}{_confusion(clf)}</div>')
        h = clf.get("confidence")
        if isinstance(h, dict):
            svg = stacked_histogram(h["edges"], [("correct", "#1a7f37", h["correct"]), ("wrong", "#c62828", h["wrong"])],
                                    "classifier confidence on the test images", "top-class probability")
            parts.append(f'<h3>Confidence, correct against wrong</h3><div class="charts" id="confidence">{svg}</div>')
    elif r.semisup:
        parts.append(todo("this eval.json predates the classifier's per-class results: run "
                          f"<code>{esc(r.evaluate_command())}</code> again."))
    probe = r.eval.get("classes")
    if isinstance(probe, dict):
        parts.append(f"<h3>Linear probe on the frozen encoder: test top-1 {r.eval.get('linear', float('nan')):.1f}%</h3>")
        parts.append(f'<div class="row">{_per_class(probe)}{_confusion(probe)}</div>')
    else:
        parts.append(todo("this eval.json predates per-class results: run "
                          f"<code>{esc(r.evaluate_command())}</code> again to fill this."))
    parts.append('<p class="note">Confusion: rows are the true class, columns the predicted one; the darker a '
                 "cell, the larger its share of the row (green: right, red: mistaken for another class; red is "
                 "three times as strong, so that confusions stand out).</p>")
    return "".join(parts)


# -- pictures, skipped, config ------------------------------------------------------------------
def pictures_section(r: Run) -> str:
    from PIL import Image

    parts = []
    for name, caption in PICTURES.items():
        p = r.path / f"{name}.png"
        if not p.is_file():
            continue
        try:
            with Image.open(p) as im:
                w = im.size[0]
        except OSError as e:
            parts.append(todo(f"{esc(p.name)} cannot be read ({esc(e)})"))
            continue
        zoom = max(1, min(4, 640 // max(1, w)))
        parts.append(f'<figure id="picture-{name}"><img src="{data_uri(p.read_bytes())}" width="{w * zoom}" '
                     f'alt="{esc(name)}"><figcaption class="note">{esc(caption)} ({esc(p.name)})</figcaption></figure>')
        if name == "traversals":
            parts.append(_traversal_legend(r))
    if not parts:
        return '<p class="note">No pictures: this is not a generative run (or no epoch finished).</p>'
    return f'<div class="pictures">{"".join(parts)}</div>'


def _traversal_legend(r: Run) -> str:
    legend = r.read_json("traversals_legend.json")
    if not legend or not isinstance(legend.get("rows"), list):
        return todo("no traversals_legend.json: which latent each row is, is unknown")
    keys = [k for k in LEGEND_HEADS if any(k in row for row in legend["rows"])]
    rows = [[", ".join(map(fmt, row[k])) if isinstance(row.get(k), list) else row.get(k, "-") for k in keys]
            for row in legend["rows"]]
    values = legend.get("values")
    cols = f" Columns: values {', '.join(map(fmt, values))}." if isinstance(values, list) else ""
    return (f'<p class="note">{esc(legend.get("base", ""))}.{esc(cols)}</p>'
            + table([LEGEND_HEADS[k] for k in keys], rows, cls="legend"))


def skipped_section(r: Run, shown: int = 200) -> str:
    rows = r.read_csv("skipped.csv")
    if not rows:
        return "<p>none: every image was used.</p>"
    body = table(["file", "reason"], [[row.get("path", ""), row.get("reason", "")] for row in rows[:shown]])
    more = f'<p class="note">and {len(rows) - shown} more in skipped.csv</p>' if len(rows) > shown else ""
    return f"<p>{len(rows)} file(s) could not be used:</p>{body}{more}"


def config_section(r: Run) -> str:
    def show(v) -> str:  # as config.yaml writes it
        return yaml.safe_dump(v, default_flow_style=True, width=1000).removesuffix("...\n").strip()

    return ('<p class="note">The resolved config (config.yaml).</p>'
            + table(["option", "value"], [[k, show(v)] for k, v in r.config.items()], cls="kv"))
