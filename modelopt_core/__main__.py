"""``python -m modelopt_core``: the ``modelopt`` command."""

import sys

from .cli import main

sys.exit(main())
