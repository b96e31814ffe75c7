"""What a run tells the analyst besides its rows: each warning once, and the state of each route.

A warning printed three times reads as three problems; a look-up that failed is remembered as
failed (by the caller caching its result), and the text is said once here. Route states feed
the verdict line at the end of a run.

Standard library only, on purpose: the crash-dump layer (``layers/crashdump.py``) says its
facts once with :class:`SaidOnce` too, and a layer must load without Volatility's plugins.
"""

import dataclasses
import logging
from typing import Dict, Hashable, List, Optional, Set

vollog = logging.getLogger(__name__)

#: Route states, from best to worst.
COMPLETE = "complete"  # walked to its end: absence from it is evidence
INCOMPLETE = "incomplete"  # walked, but broken somewhere: absence proves nothing
UNAVAILABLE = "unavailable"  # could not run at all (no symbol, unreadable head, ...)
SKIPPED = "skipped"  # not asked for (--no-scan)
NOT_ON_THIS_BUILD = "not on this build"  # e.g. ExpCallbackListHead before Windows 8.1
_ORDER = (COMPLETE, NOT_ON_THIS_BUILD, SKIPPED, INCOMPLETE, UNAVAILABLE)


class SaidOnce:
    """Logs each message (or each ``key``) once: the same fact said again is noise."""

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


@dataclasses.dataclass
class RouteState:
    state: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state


class Diagnostics:
    """Collects the run's warnings (each said once) and route states."""

    def __init__(self, logger: logging.Logger = vollog) -> None:
        self._once = SaidOnce(logger)
        self.warnings: List[str] = []
        self.routes: Dict[str, RouteState] = {}

    def warning(self, message: str) -> None:
        if self._once.log(logging.WARNING, message):
            self.warnings.append(message)

    def info(self, message: str) -> None:
        self._once.log(logging.INFO, message)

    def route(self, name: str, state: str, detail: str = "") -> None:
        """Record how a route (or the module list) fared; the worst report of a name wins."""
        current = self.routes.get(name)
        if current is None or _ORDER.index(state) > _ORDER.index(current.state):
            self.routes[name] = RouteState(state, detail)
