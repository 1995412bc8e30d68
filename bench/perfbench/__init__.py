"""The performance benchmark behind ``bench/perf.py``, one job per module.

- ``config``: the full and quick configurations (shapes, repeats, goal limits).
- ``comparisons``: the methods and the compared pairs, declared (edit here to add a row).
- ``stats``: medians, quartiles, per-repeat ratios, slopes.
- ``memory``: peak-RSS and allocator-peak probes of the current process.
- ``ou_trainers``: OpenUnlearning import, models, batches, trainers, pass counting.
- ``bench_trainers``: bench-only trainer variants (imported in measuring processes only).
- ``isolation``: one fresh process per measurement point (fork or exec).
- ``sections``: what is measured, one module per section (points, analysis, Markdown).
- ``goals``: the goal records every section reports against.
- ``plan``: the ordered, interleaved measurement points of a run.
- ``report``: the analysis of the raw results, perf.md and the sections' figures.
- ``readme``: the generated figures block of bench/README.md, from perf.json.
- ``machine``: what the figures were measured on (CPU, versions, threads, load).
- ``run``: a run from plan to files, merging a partial run into an earlier perf.json.
"""
