"""replearn: label-efficient image representation learning.

``replearn.pretrain``, ``replearn.evaluate``, ``replearn.embed``, ``replearn.semisup``,
``replearn.metric``, ``replearn.predict``, ``replearn.index``, ``replearn.search``,
``replearn.duplicates``, ``replearn.select`` and ``replearn.report`` are the Python twins of the
``replearn`` commands of the same names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from replearn.allocator import tune as _tune_malloc  # noqa: E402

_tune_malloc()  # big tensors reuse heap memory instead of fresh mappings (replearn/allocator.py)

# name -> (module, function); imported on first use: importing replearn must not pull in
# Lightning, torchvision or FAISS.
_API = {
    "pretrain": ("replearn.train.run", "pretrain"),
    "evaluate": ("replearn.evaluate.protocol", "evaluate"),
    "embed": ("replearn.embed.export", "embed"),
    "semisup": ("replearn.train.semisup", "semisup"),
    "metric": ("replearn.train.metric", "metric"),
    "predict": ("replearn.evaluate.predict", "predict"),
    "index": ("replearn.embed.index", "index"),
    "search": ("replearn.embed.index", "search"),
    "duplicates": ("replearn.embed.duplicates", "duplicates"),
    "select": ("replearn.embed.select", "select"),
    "report": ("replearn.report", "report"),
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        import importlib
        import types

        module, function = _API[name]
        fn = getattr(importlib.import_module(module), function)
        # Importing a subpackage (replearn.embed, .evaluate, .report) binds it to its name here,
        # hiding the function of that name; unbind it, so replearn.embed(...) stays the function.
        # (After "import replearn.embed.x" in user code the package wins until this runs again.)
        for other in _API:
            if isinstance(globals().get(other), types.ModuleType):
                del globals()[other]
        return fn
    raise AttributeError(f"module 'replearn' has no attribute {name!r}")
