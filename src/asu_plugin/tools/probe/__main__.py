"""``python -m asu_plugin.tools.probe``: the ``asu-probe`` command line."""

import sys

from .cli import main

sys.exit(main())
