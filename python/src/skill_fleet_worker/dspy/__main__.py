"""``python -m skill_fleet_worker.dspy run TARGET``."""

import sys

from .runner import main

sys.exit(main())
