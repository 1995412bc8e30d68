"""Hydra plugin of asu-plugin: makes ASU available in any OpenUnlearning checkout, no fork.

Hydra imports every module of the ``hydra_plugins`` namespace package at start-up, so this
package is how ``trainer=ASU_KL`` and ``experiment=unlearn/tofu/asu`` reach OU's unmodified
``src/train.py``: :mod:`.asu_searchpath` adds our ``configs/`` to the config search path and
registers the trainers. Kept import-light: it runs in *every* Hydra app of the environment.
"""
