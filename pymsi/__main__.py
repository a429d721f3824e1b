"""``python -m pymsi``: the ``pymsi`` command."""

import sys

from .cli import main

sys.exit(main())
