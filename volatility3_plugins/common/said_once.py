"""Saying a fact once: the same fact said again is noise.

Standard library only: the crash-dump layer says its facts about a file once per process with
it (the stacker and the layer run again for every automagic pass and context clone), and the
run diagnostics (``windows/kernelread/diagnostics.py``) say each warning of a run once.
"""

import logging
from typing import Hashable, Optional, Set


class SaidOnce:
    """Logs each message (or each ``key``) once."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._said: Set[Hashable] = set()

    def log(self, level: int, message: str, key: Optional[Hashable] = None) -> bool:
        """Log ``message`` unless it (or ``key``, when given) was said before; True when said now."""
        key = message if key is None else key
        if key in self._said:
            return False
        self._said.add(key)
        self._logger.log(level, message)
        return True
