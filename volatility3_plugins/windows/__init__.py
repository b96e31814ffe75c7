"""Windows plugins of this project.

Volatility imports this folder as ``volatility3.plugins.windows``. Python stops at the first
regular package of that name, so this package must extend its own ``__path__`` with the
``windows`` folder of every other plugin directory, Volatility's own included; otherwise the
core Windows plugins would vanish as soon as ``-p`` names this directory.
"""

import os
import sys

_parent_name, _own_name = __name__.rsplit(".", 1)
_parent = sys.modules.get(_parent_name)
if _parent is not None and hasattr(_parent, "__path__"):
    __path__ = [os.path.join(entry, _own_name) for entry in _parent.__path__]
