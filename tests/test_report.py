"""replearn report: a self-contained page that opens from disk in a real headless Chromium with the
network off, without a single error, with every section; and what eval.json gained for it (per-class
results, the classifier's confusion and confidence) against counts made by hand."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefactory import make_class_folder
from replearn.errors import ReplearnError
from replearn.evaluate.linear import linear_probe, linear_probe_predict
from replearn.evaluate.protocol import class_summary, confidence_histogram, evaluate
from replearn.report import report
from replearn.report.build import find_baseline
from replearn.report.charts import nice_ticks, shown_range

SECTIONS = ("curves", "evaluation", "map", "neighbours", "classes", "pictures", "skipped", "config")
CHROMIUM = Path("/usr/bin/chromium")
# REPLEARN_SCREENSHOT=path keeps a copy of the browser test's screenshot for a person to look at
SCREENSHOT_COPY = os.environ.get("REPLEARN_SCREENSHOT")
TINY = dict(width=4, image_size=16, precision="32")


# -- helpers: the page's sections, and a real browser --------------------------------------------
def sections(html: str) -> dict[str, str]:
    """id -> inner HTML of each <section id=...> (sections do not nest)."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, re.S))


def map_points(html: str) -> tuple[int, int]:
    """(points the map claims in data-points, <circle data-id> elements in it)."""
    part = sections(html)["map"]
    claimed = re.search(r'data-points="(\d+)"', part)
    return (int(claimed.group(1)) if claimed else -1), len(re.findall(r"<circle data-id=", part))


def _unshare() -> list[str]:
    """``unshare -n`` (a network namespace with no network) where this machine allows it."""
    ok = shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    return ["unshare", "-n"] if ok else []


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a file with the network off (no network namespace where possible, no
    name resolution, a dead proxy) and console messages on stderr."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the report test opens the page in a real browser; "
                    "`make test` installs it (Debian's chromium package)")
    cmd = [*_unshare(), str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--no-first-run", '--host-resolver-rules=MAP * ~NOTFOUND',
           "--proxy-server=127.0.0.1:9", "--enable-logging=stderr", "--v=0", *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def browser_problems(page: Path, profile: Path) -> tuple[list[str], str]:
    """(everything that went wrong in the page: console messages, and what the page itself recorded
    in #page-errors (script errors, failed loads, policy violations); the DOM after its scripts)."""
    run = chromium(page, profile, "--dump-dom")
    assert run.returncode == 0 and "</html>" in run.stdout, run.stderr[-2000:]
    # the report logs nothing; Chromium's own pages (source: chrome://...) sometimes do
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line and "source: chrome://" not in line]
    recorded = re.search(r'<pre id="page-errors"[^>]*>(.*?)</pre>', run.stdout, re.S)
    assert recorded is not None, "the page lost its error record"
    return console + [e for e in recorded.group(1).splitlines() if e.strip()], run.stdout


# -- runs --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """A one-epoch SimCLR run on 256 digits, evaluated, and its report with 120 map points."""
    from replearn.train.run import pretrain

    tmp = tmp_path_factory.mktemp("report")
    run = pretrain(out=str(tmp / "simclr"), data="digits", epochs=1, batch_size=64, limit=256, knn_monitor=True, **TINY)
    evaluate(str(run), data="digits", few_label=[2], seeds=[0], verbose=False)
    return run, report(run, map_points=120)


@pytest.mark.slow
def test_report_opens_offline_without_errors_with_every_section(encoder_run, tmp_path, capsys):
    run, page = encoder_run
    assert page == run / "report.html"
    problems, dom = browser_problems(page, tmp_path / "profile")
    assert problems == []
    found = sections(dom)
    assert [s for s in SECTIONS if s not in found] == []
    assert 'data-ready="yes"' in found["map"]  # the map's script ran to its end
    claimed, drawn = map_points(dom)
    assert claimed == drawn == min(120, 360)  # digits' test split holds 360 images
    assert found["neighbours"].count('class="query"') == 6
    assert len(re.findall(r'<figure class="(?:right|wrong)"', found["neighbours"])) == 6 * 8
    e = json.loads((run / "eval.json").read_text())
    assert f"{e['knn']:.1f}" in found["evaluation"] and "raw pixels (computed for this report)" in found["evaluation"]
    assert 'class="confusion"' in found["classes"] and "Linear probe" in found["classes"]
    assert ">learning rate</text>" in found["curves"] and ">kNN monitor: top-1 %</text>" in found["curves"]
    assert "none" in found["skipped"] and "digits" in found["config"]
    shot = tmp_path / "report.png"
    chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.is_file() and shot.stat().st_size > 10_000
    if SCREENSHOT_COPY:
        shutil.copyfile(shot, SCREENSHOT_COPY)


@pytest.mark.slow
def test_pointing_at_a_dot_shows_its_thumbnail_and_label(encoder_run, tmp_path):
    _, page = encoder_run
    html = page.read_text()
    info = json.loads(re.search(r'<script type="application/json" id="map-data">(.*?)</script>', html).group(1))
    point = re.search(r'<circle data-id="7" data-label="(\d+)"', html)
    hover = ("<script>document.querySelector('#map-svg circle[data-id=\"7\"]')"
             ".dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));</script>")
    pointed = tmp_path / "pointed.html"
    pointed.write_text(html.replace("</body>", hover + "</body>"))
    problems, dom = browser_problems(pointed, tmp_path / "profile")
    assert problems == []
    tip = re.search(r'<div id="map-tip"([^>]*)><div class="sprite" style="([^"]*)"></div><div class="cap">([^<]*)<', dom)
    assert tip and "hidden" not in tip.group(1)
    zoomed = info["tile"] * info["zoom"]
    row, col = divmod(7, info["cols"])
    assert f"background-position: {-col * zoomed}px {-row * zoomed}px" in tip.group(2)  # image 7 of the sheet
    assert tip.group(3) == f"{info['names'][int(point.group(1))]} \u00b7 {info['ids'][7]}"


@pytest.mark.slow
@pytest.mark.parametrize("inject, expect", [
    ("<script>notAFunction();</script>", "notAFunction"),
    ('<img src="https://example.com/pixel.png">', "example.com"),
    ("NO-CSP" + '<img src="https://example.com/pixel.png">', "example.com"),  # the network being off catches it
])
def test_the_browser_check_catches_a_broken_page(encoder_run, tmp_path, inject, expect):
    _, page = encoder_run
    html = page.read_text()
    if inject.startswith("NO-CSP"):
        inject = inject.removeprefix("NO-CSP")
        html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
        assert "Content-Security-Policy" not in html
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("</main>", inject + "</main>"))
    problems, _ = browser_problems(broken, tmp_path / "profile")
    assert any(expect in p for p in problems), problems


def test_eval_json_per_class_results_match_the_probe(encoder_run):
    run, _ = encoder_run
    e = json.loads((run / "eval.json").read_text())
    c = e["classes"]
    m = np.array(c["confusion"])
    assert c["source"] == "linear probe" and c["names"] == [str(i) for i in range(10)] and m.shape == (10, 10)
    assert m.sum() == sum(c["support"]) == 360
    assert round(100 * np.trace(m) / m.sum(), 2) == e["linear"]  # the same predictions as the accuracy
    for i in range(10):
        assert c["per_class"][i] == round(100 * m[i, i] / m[i].sum(), 2)


def test_linear_probe_predict_is_what_linear_probe_scores():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    x[np.arange(200), y] += 2.0
    pred, C = linear_probe_predict(x[:150], y[:150], x[150:])
    acc, C2 = linear_probe(x[:150], y[:150], x[150:], y[150:])
    assert C == C2 and acc == 100 * np.mean(pred == y[150:]) and pred.dtype == np.int64


def test_class_summary_and_confidence_histogram_against_loops():
    truth = torch.tensor([0, 0, 1, 1, 1, 2, -1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, -1, 2, 2])  # -1: a probe trained on unlabelled images too
    c = class_summary(pred, truth, ["cat", "dog"], "test")
    assert c["names"] == ["cat", "dog", "2"]  # padded to every class seen
    want = np.zeros((3, 3), int)
    for t, p in zip(truth.tolist(), pred.tolist(), strict=True):
        if t >= 0 and p >= 0:
            want[t, p] += 1
    assert c["confusion"] == want.tolist() and c["support"] == [2, 3, 2]
    assert c["per_class"] == [50.0, 66.67, 50.0]  # the -1 prediction of a "2" is wrong
    conf = torch.tensor([0.0, 0.049, 0.05, 0.5, 0.999, 1.0])
    right = torch.tensor([True, False, True, True, False, True])
    h = confidence_histogram(conf, right, bins=20)
    assert len(h["edges"]) == 21 and h["edges"][0] == 0 and h["edges"][-1] == 1
    correct, wrong = [0] * 20, [0] * 20
    for v, ok in zip(conf.tolist(), right.tolist(), strict=True):
        (correct if ok else wrong)[min(int(v * 20), 19)] += 1
    assert h["correct"] == correct and h["wrong"] == wrong


@pytest.mark.slow
def test_semisup_report_shows_the_classifier_and_its_confidence(tmp_path):
    from replearn.train.semisup import semisup

    run = semisup(out=str(tmp_path / "semi"), data="digits", labels_per_class=2, method="pseudolabel", steps=4,
                  batch_size=16, mu=2, limit=256, method_args={"threshold": 0.5}, **TINY)
    e = evaluate(str(run), data="digits", few_label=[1], seeds=[0], verbose=False)
    clf = e["classifier"]
    assert np.array(clf["confusion"]).sum() == sum(clf["support"]) == 360 and clf["source"] == "classifier"
    conf = clf["confidence"]
    assert sum(conf["correct"]) + sum(conf["wrong"]) == 360
    assert round(100 * sum(conf["correct"]) / 360, 2) == e["accuracy"]
    assert round(100 * np.trace(np.array(clf["confusion"])) / 360, 2) == e["accuracy"]
    html = report(run, map_points=40).read_text()
    part = sections(html)["classes"]
    assert f"The run's classifier: test top-1 {e['accuracy']:.1f}%" in part
    hist = re.search(r'<div class="charts" id="confidence">(.*?)</div>', part, re.S).group(1)
    bars = re.findall(r"<title>[^<]*: (\d+)</title>", hist)
    assert sum(map(int, bars)) == 360  # every test image in one bar
    assert "pseudo" in sections(html)["curves"] or "loss_u" in sections(html)["curves"]


@pytest.mark.slow
def test_generative_report_shows_pictures_and_says_what_to_run(tmp_path):
    from replearn.train.run import pretrain

    folder = tmp_path / "images"
    make_class_folder(folder, {"a": 12, "b": 12})
    (folder / "a" / "broken.png").write_text("not an image")
    run = pretrain(out=str(tmp_path / "vae"), data=str(folder), method="vae", epochs=1, batch_size=8,
                   knn_monitor=False, method_args={"latent_dim": 3}, **TINY)
    html = report(run).read_text()  # no eval.json: the sections say what to run
    found = sections(html)
    pictures = found["pictures"]
    for name in ("reconstructions", "samples", "traversals"):
        assert re.search(rf'<figure id="picture-{name}"><img src="data:image/png;base64,[A-Za-z0-9+/=]{{100,}}"', pictures)
    legend = re.search(r'<table class="legend">(.*?)</table>', pictures, re.S).group(1)
    assert legend.count("<tr>") == 1 + 3 and "mean KL (nats)" in legend  # one row per latent
    assert f"replearn evaluate {run} --data {folder}" in found["evaluation"]
    assert "replearn evaluate" in found["classes"]
    assert "broken.png" in found["skipped"]
    assert map_points(html) == (24, 24)  # every usable image: fewer than map_points


def test_a_run_without_its_optional_files_still_gets_a_report(tmp_path, capsys):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.yaml").write_text("data: digits\nmethod: simclr\n")
    (run / "metrics.csv").write_text("epoch,loss_step,step\n0,2.5,9\n0,2.0,19\n")  # no lr column
    (run / "meta.json").write_text("{not json")
    html = report(run).read_text()
    found = sections(html)
    assert [s for s in SECTIONS if s not in found] == []
    assert "learning rate: not logged" in found["curves"] and "loss per step" in found["curves"]
    assert "no encoder.pt" in found["map"] and "no encoder.pt" in found["neighbours"]
    assert "replearn evaluate" in found["evaluation"] and "meta.json cannot be read" in html
    assert f"wrote {run / 'report.html'}" in capsys.readouterr().out
    (run / "encoder.pt").write_bytes(b"not a checkpoint")
    assert "encoder.pt cannot be read" in sections(report(run).read_text())["map"]


def test_not_a_run_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "eval.json").write_text("{}")  # a baseline folder: results, no run
    (tmp_path / "file.txt").write_text("x")
    for path, words in ((tmp_path / "raw", "not a run folder"), (tmp_path / "file.txt", "not a run folder"),
                        (tmp_path / "nothing", "no run folder")):
        with pytest.raises(ReplearnError, match=words) as err:
            report(path)
        assert "\n" not in str(err.value) and err.value.hint


def test_find_baseline_prefers_the_runs_own_raw_sibling(tmp_path):
    def folder(name, encoder, data):
        (tmp_path / name).mkdir(parents=True)
        e = {"encoder": encoder, "data": data, "knn": 50.0, "linear": 60.0, "few_label": {}}
        (tmp_path / name / "eval.json").write_text(json.dumps(e))

    (tmp_path / "sweep" / "simclr").mkdir(parents=True)
    folder("a-raw", "raw pixels", "digits")
    folder("sweep/simclr-raw", "raw pixels", "digits")
    folder("sweep/byol", "byol convnet", "digits")
    folder("sweep/fm-raw", "raw pixels", "fashion-mnist")
    (tmp_path / "sweep" / "aa-raw").mkdir()  # first in order, but no results in its eval.json
    (tmp_path / "sweep" / "aa-raw" / "eval.json").write_text(json.dumps({"encoder": "raw pixels", "data": "digits"}))
    run = tmp_path / "sweep" / "simclr"
    assert find_baseline(run, "digits") == (tmp_path / "sweep" / "simclr-raw" / "eval.json").resolve()
    assert find_baseline(run, "fashion-mnist") == (tmp_path / "sweep" / "fm-raw" / "eval.json").resolve()
    (tmp_path / "sweep" / "simclr-raw" / "eval.json").unlink()
    assert find_baseline(run, "digits") == (tmp_path / "a-raw" / "eval.json").resolve()  # a level up
    assert find_baseline(run, "shapes") is None


def test_chart_axes_are_round_and_ignore_a_first_step_spike():
    assert nice_ticks(0.13, 0.97) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert nice_ticks(9, 10799) == [2000, 4000, 6000, 8000, 10000]
    ys = [600.0, 300.0] + [50 - i * 0.1 for i in range(100)]
    lo, hi = shown_range(ys)
    assert lo == min(ys) and 50 <= hi < 60  # the spike is cut, the rest keeps its detail
    assert shown_range([1.0, 2.0, 3.0]) == (1.0, 3.0)


def test_neighbour_grids_take_the_most_similar_others_by_a_naive_loop():
    from replearn.report.maps import nearest

    rng = np.random.default_rng(0)
    f = rng.standard_normal((40, 6)).astype(np.float32)
    f[7] = f[3] * 2.0  # an exact copy in direction: similarity 1 with row 3
    queries = [3, 10, 39]
    got = nearest(f, queries, 5)
    for q, row in zip(queries, got, strict=True):
        cos = [(f[q] @ f[j]) / (np.linalg.norm(f[q]) * np.linalg.norm(f[j])) if j != q else -np.inf for j in range(40)]
        assert row.tolist() == np.argsort(-np.array(cos), kind="stable")[:5].tolist()
    assert got[0][0] == 7  # the copy first, the query itself never
