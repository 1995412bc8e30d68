"""The mini-TOFU study behind ``bench/mini_tofu.py`` (its CLI), one module per job:

* :mod:`.settings` — the study's fixed settings and its method rows (adding a method is a row here);
* :mod:`.plan` — every model and evaluation as one OU command, and the work dir's layout;
* :mod:`.evals` — reading a finished OU evaluation;
* :mod:`.selection` — the fixed selection rule and the memorisation gate of the seeds phase;
* :mod:`.cache` — fluency and teacher answers, computed with a model and cached in the work dir;
* :mod:`.costs` — CPU and elapsed seconds per phase;
* :mod:`.collect` — the report's data from every finished evaluation;
* :mod:`.verdict` — the paper's claim checked on the seed table;
* :mod:`.report` — mini_tofu.{json,md} and the scatter plot.

``bench/`` is not installed: the CLI (and tests/bench_scripts.py) put it on ``sys.path``.
"""
