"""The measured sections, one module each, all with the same parts:

- ``NAME``; ``NEEDS_OU`` (skipped, with the reason in perf.md, when OpenUnlearning is missing);
- ``POINTS``: point kind -> function(cfg, spec) -> JSON result, run in a fresh process;
- ``plan(cfg)``: the section's point specs; optionally ``rss_methods(cfg)``: methods whose
  steady-state peak RSS it needs (shared ``step_rss`` points, interleaved across sections);
- ``analyse(cfg, results, report)``: adds its key and its goal records to ``report``;
- ``render(report)``: its Markdown lines; ``why(goal, report)``: a missed goal explained;
- optionally ``FIGURE`` (a file name) and ``plot(report)`` (a matplotlib Figure or None).
"""

from __future__ import annotations

from . import design, loss, scaling, step, teacher

#: In report order (also the order of --only's help and of the analysis / goals).
SECTIONS = {module.NAME: module for module in (teacher, step, design, loss, scaling)}
POINT_KINDS = {kind: function for module in SECTIONS.values() for kind, function in module.POINTS.items()}
