"""Make ``volatility3.plugins.windows.callback_objects`` importable the way ``vol -p
volatility3_plugins`` does: our plugin folder goes first on ``volatility3.plugins.__path__``
and its ``windows/__init__.py`` shim then extends the Windows package to the core folders."""

import os

import volatility3.plugins
from volatility3.framework import constants

PLUGIN_DIR = os.path.abspath(
    os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "volatility3_plugins")
)

if PLUGIN_DIR not in volatility3.plugins.__path__:
    volatility3.plugins.__path__ = [PLUGIN_DIR] + [
        path for path in constants.PLUGINS_PATH if path != PLUGIN_DIR
    ]
