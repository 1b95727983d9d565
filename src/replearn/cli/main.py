"""The ``replearn`` command: argument parsing and messages only; the work is in the Python API."""

from __future__ import annotations

import argparse
import sys
import typing

from replearn.config import (
    DuplicatesConfig,
    EmbedConfig,
    EvaluateConfig,
    IndexConfig,
    MetricConfig,
    PredictConfig,
    PretrainConfig,
    ReportConfig,
    SearchConfig,
    SelectConfig,
    SemiConfig,
    _closest,
    fields_of,
)
from replearn.errors import ReplearnError

EXAMPLES = {
    "pretrain": "example:\n  replearn pretrain --data fashion-mnist --method simclr --backbone convnet --epochs 3 --out runs/simclr\n"
    "  replearn pretrain --data ./my_images --out runs/mine          # a folder, labels not needed\n"
    "  replearn pretrain --out runs/simclr --resume                  # continue an interrupted run",
    "evaluate": "example:\n  replearn evaluate runs/simclr --data fashion-mnist\n"
    "  replearn evaluate --baseline raw --data fashion-mnist --out runs/raw",
    "embed": "example:\n  replearn embed runs/simclr --data fashion-mnist --split test --out emb.npz",
    "semisup": "example:\n  replearn semisup --data fashion-mnist --labels-per-class 4 --method fixmatch --init runs/simclr --out runs/fixmatch\n"
    "  replearn semisup --data ./my_images --labels labels.csv --out runs/clf   # rows path,label\n"
    "  replearn semisup --out runs/fixmatch --resume --steps 4000            # continue, or train longer",
    "metric": "example:\n  replearn metric --data fashion-mnist --loss supcon --classes 0-4 --out runs/supcon\n"
    "  replearn evaluate runs/supcon --data fashion-mnist       # retrieval on the held-out classes 5-9\n"
    "  replearn metric --data ./labelled_images --loss arcface --init runs/simclr --out runs/arcface",
    "predict": "example:\n  replearn predict runs/fixmatch --data ./new_images --out predictions.csv",
    "index": "example:\n  replearn embed runs/simclr --data ./my_images --out emb.npz\n"
    "  replearn index emb.npz --out emb.index          # exact up to a million images, HNSW above",
    "search": "example:\n  replearn search emb.index --query photo.jpg -k 10      # embedded with the run's encoder\n"
    "  replearn search emb.index --id shoes/0042.png --out neighbours.csv",
    "duplicates": "example:\n  replearn duplicates emb.npz --threshold 0.95 --out dups.csv",
    "select": "example:\n  replearn select emb.npz --budget 40 --strategy typiclust --out to_label.csv\n"
    "  replearn select emb.npz --budget 100 --strategy kcenter --exclude labelled.csv --out more.csv",
    "report": "example:\n  replearn report runs/simclr        # writes runs/simclr/report.html; open it in a browser",
}
CONFIGS = {
    "pretrain": PretrainConfig, "evaluate": EvaluateConfig, "embed": EmbedConfig,
    "semisup": SemiConfig, "metric": MetricConfig, "predict": PredictConfig,
    "index": IndexConfig, "search": SearchConfig, "duplicates": DuplicatesConfig, "select": SelectConfig,
    "report": ReportConfig,
}
# The positional argument of each command that takes one: (name, help, optional)
POSITIONAL = {
    "evaluate": ("run", "run folder (or its encoder.pt)", True),
    "embed": ("run", "run folder (or its encoder.pt)", False),
    "predict": ("run", "a run folder of 'replearn semisup' (or its classifier.pt)", False),
    "index": ("embeddings", "an embeddings file of 'replearn embed' (.npz or .parquet)", False),
    "search": ("index", "an index file of 'replearn index'", False),
    "duplicates": ("embeddings", "an embeddings file of 'replearn embed' (.npz or .parquet)", False),
    "select": ("embeddings", "an embeddings file of 'replearn embed' (.npz or .parquet)", False),
    "report": ("run", "a run folder", False),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ReplearnError(message, f"see '{self.prog} --help'")


def _help_for(name: str, tp, default) -> str:
    doc = "" if default is None else f"(default: {default})"
    choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()
    return f"{'/'.join(map(str, choices))} {doc}".strip()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="replearn", description="Label-efficient image representation learning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd, cls in CONFIGS.items():
        s = sub.add_parser(
            cmd, help=(cls.__doc__ or "").strip(), description=(cls.__doc__ or "").strip(), epilog=EXAMPLES[cmd],
            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        )
        if cmd in POSITIONAL:
            name, helptext, optional = POSITIONAL[cmd]
            s.add_argument(name, nargs="?" if optional else None, help=helptext)
        s.add_argument("--config", metavar="FILE", help="YAML file of options; command-line options override it")
        if cmd in ("pretrain", "semisup", "metric"):
            s.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
        s.add_argument("--debug", action="store_true", help="show tracebacks")
        defaults = cls()
        for name, tp in fields_of(cls).items():
            flags = ["--" + name.replace("_", "-")] + (["-k"] if cmd == "search" and name == "k" else [])
            s.add_argument(
                *flags, dest="opt_" + name, metavar="VALUE", default=argparse.SUPPRESS,
                help=_help_for(name, tp, getattr(defaults, name)),
            )
    r = sub.add_parser("results", help="a table of the eval.json of one or more runs",
                       epilog="example:\n  replearn results runs/demo runs/demo-raw",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("runs", nargs="+", help="run folders (or eval.json files)")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    sub.add_parser("methods", help="list methods, backbones, view recipes and built-in data")
    return p


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        bad = next((u for u in unknown if u.startswith("-")), unknown[0])
        if args.command in CONFIGS and bad.startswith("--"):
            raise ReplearnError(f"unknown option '{bad}'", _closest(bad[2:].split("=")[0], fields_of(CONFIGS[args.command])))
        raise ReplearnError(f"unexpected argument '{bad}'", f"see 'replearn {args.command or ''} --help'".replace("  ", " "))
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "methods":
        from replearn.data import data_names
        from replearn.methods import METHODS
        from replearn.nn import BACKBONES
        from replearn.views import RECIPES

        print("methods (replearn pretrain --method NAME):")
        width = max(map(len, METHODS.names()))
        for name in METHODS.names():
            cls = METHODS.get(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"  {name:<{width}}  {summary}")
            if cls.paper:
                print(f"  {'':<{width}}  {cls.paper}")
        from replearn.semisup import SEMI

        print("semi-supervised methods (replearn semisup --method NAME):")
        width = max(map(len, SEMI.names()))
        for name in SEMI.names():
            cls = SEMI.get(name)
            print(f"  {name:<{width}}  {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}")
            if cls.paper:
                print(f"  {'':<{width}}  {cls.paper}")
        print(f"backbones:   {', '.join(BACKBONES.names())}, or package.module:function")
        print(f"views:       {', '.join(RECIPES.names())}")
        print(f"data:        {', '.join(data_names())}, an image folder, a .npy/.npz file, or a pairs .csv (image,caption or image,image2)")
        return 0
    if args.command == "results":
        import json
        from pathlib import Path

        from replearn.evaluate.protocol import format_table

        results = []
        for run in args.runs:
            p = Path(run) / "eval.json" if Path(run).is_dir() else Path(run)
            if not p.is_file():
                raise ReplearnError(f"no eval.json in {run}", f"run 'replearn evaluate {run}' first")
            results.append(json.loads(p.read_text()))
        print(format_table(results))
        return 0
    from replearn.config import make_config

    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_")}
    cfg = make_config(CONFIGS[args.command], args.config, overrides)
    if args.command == "pretrain":
        from replearn.train.run import pretrain

        if args.resume and args.config is None:
            out = pretrain(resume=True, **overrides)  # the saved config, plus what was given here
        else:
            out = pretrain(cfg, resume=args.resume)
        print(f"done: {out}  (encoder: {out / 'encoder.pt'}; next: replearn evaluate {out})")
    elif args.command == "semisup":
        from replearn.train.semisup import semisup

        out = semisup(resume=True, **overrides) if args.resume and args.config is None else semisup(cfg, resume=args.resume)
        print(f"done: {out}  (classifier: {out / 'classifier.pt'}; next: replearn evaluate {out}, "
              f"replearn predict {out} --data FOLDER)")
    elif args.command == "metric":
        from replearn.train.metric import metric

        out = metric(resume=True, **overrides) if args.resume and args.config is None else metric(cfg, resume=args.resume)
        print(f"done: {out}  (encoder: {out / 'encoder.pt'}; next: replearn evaluate {out})")
    else:  # a command of one positional argument and its options: replearn.<command>(argument, cfg)
        import importlib

        from replearn import _API

        module, function = _API[args.command]
        getattr(importlib.import_module(module), function)(getattr(args, POSITIONAL[args.command][0]), cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return _run(argv)
    except ReplearnError as e:
        if debug:
            raise
        print(f"error: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished epochs are kept in last.ckpt; continue with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {msg} (hint: rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
