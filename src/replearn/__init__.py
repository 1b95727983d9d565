"""replearn: label-efficient image representation learning.

``replearn.pretrain``, ``replearn.evaluate``, ``replearn.embed``, ``replearn.semisup``,
``replearn.metric`` and ``replearn.predict`` are the Python twins of the ``replearn
pretrain|evaluate|embed|semisup|metric|predict`` commands.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "embed", "evaluate", "metric", "predict", "pretrain", "semisup"]


def __getattr__(name: str):
    # Lazy: importing replearn must not pull in Lightning or torchvision.
    if name == "pretrain":
        from replearn.train.run import pretrain

        return pretrain
    if name == "evaluate":
        from replearn.evaluate.protocol import evaluate

        return evaluate
    if name == "embed":
        from replearn.embed.export import embed

        return embed
    if name == "semisup":
        from replearn.train.semisup import semisup

        return semisup
    if name == "metric":
        from replearn.train.metric import metric

        return metric
    if name == "predict":
        from replearn.evaluate.predict import predict

        return predict
    raise AttributeError(f"module 'replearn' has no attribute {name!r}")
