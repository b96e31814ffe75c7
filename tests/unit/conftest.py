"""Unit tests import the plugin's package under its installed name, ``volatility3_plugins``.

Volatility's own Windows symbols must be imported before ``poolscanner`` (their modules import
each other); a real run does so at start-up.
"""

import volatility3.framework.symbols.windows  # noqa: F401
