"""replearn: label-efficient image representation learning.

``replearn.pretrain``, ``replearn.evaluate`` and ``replearn.embed`` are the Python twins of the
``replearn pretrain|evaluate|embed`` commands.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "embed", "evaluate", "pretrain"]


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
    raise AttributeError(f"module 'replearn' has no attribute {name!r}")
