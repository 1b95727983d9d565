"""``replearn report RUN``: one self-contained HTML file about a run (``build``), its charts
(``charts``), the map of its embeddings (``maps``) and the page itself (``page``)."""

from replearn.report.build import report

__all__ = ["report"]
