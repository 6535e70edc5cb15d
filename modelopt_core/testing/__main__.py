"""``python -m modelopt_core.testing PLUGIN``: every contract check on one plugin's components."""

import sys

from . import main

sys.exit(main())
