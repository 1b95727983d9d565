"""Semi-supervised methods, one file each, registered by their CLI name.

Every module in this package is imported here, so a new method needs only its own file.
"""

import importlib
import pkgutil

from replearn.semisup.base import SEMI, SemiBatch, SemiMethod, SemiOptions

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["SEMI", "SemiBatch", "SemiMethod", "SemiOptions"]
