"""Pictures of results: the batch's overlay PNG, evaluation panels, summary figures, an HTML index and the data-set
summary.

Plotting lives here and only here, imported where pictures are asked for (``segment --overlay``, the bundle's
``evaluating``, ``evaluate-oof --pictures``, ``prepare-lgg``), never otherwise by the inference path (``segment``,
the Slicer module), which stays free of our plotting code. Figures are drawn with matplotlib's ``Figure`` and the
Agg canvas (no pyplot, no display needed).
"""
