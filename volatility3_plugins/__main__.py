"""``python -m volatility3_plugins ...``: the ``vol-callbackobjects`` command, for a fleet sweep
to start with the very interpreter (and virtual environment) it runs in."""

from . import main

main()
