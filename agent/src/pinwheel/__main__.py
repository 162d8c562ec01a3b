"""``python -m pinwheel``: the same as the ``pinwheel`` command."""

import sys

from .cli import main

sys.exit(main())
