"""``python -m tests.forge.fleet --out DIR``: forge a fleet (the package's docstring says what)."""

import sys

from . import main

sys.exit(main())
