"""ASU inside OpenUnlearning (OU): trainers registered in OU's registry, a model handler that
scores the smoothed teacher, run records, exact resume, and runners for OU's own scripts.

Uses :mod:`asu_plugin.core` for everything about smoothing and the loss. Modules that subclass
OU's classes (:mod:`.trainers`, :mod:`.teacher_model`) import OU, so they load only once OU's
``src/`` is importable (:func:`.registration.register` sees to it).
"""
