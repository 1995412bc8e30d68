"""The teacher diagnosis of ``bench/teacher.py`` (issue 14): what the smoothed teacher does to
the forget answers of a small model, per (tau, layer set).

* :mod:`.measure` — per model: the forget01 rows, teacher-forced figures of every cell, greedy
  answers and their fluency / ROUGE-L, each cell cached so a run can stop and go on;
* :mod:`.report` — ``teacher.json``, ``teacher.md`` (plain-words answers generated from the
  figures) and ``teacher.png``.
"""
