"""What a run tells the analyst besides its rows: each warning once, and the state of each route.

A warning printed three times reads as three problems; a look-up that failed is remembered as
failed (by the caller caching its result), and the text is said once here. Route states feed
the verdict line at the end of the run (see :mod:`.verdict`).
"""

import dataclasses
import logging
from typing import Dict, List, Set

vollog = logging.getLogger(__name__)

#: Route states, from best to worst.
COMPLETE = "complete"  # walked to its end: absence from it is evidence
INCOMPLETE = "incomplete"  # walked, but broken somewhere: absence proves nothing
UNAVAILABLE = "unavailable"  # could not run at all (no symbol, unreadable head, ...)
SKIPPED = "skipped"  # not asked for (--no-scan)
NOT_ON_THIS_BUILD = "not on this build"  # e.g. ExpCallbackListHead before Windows 8.1


@dataclasses.dataclass
class RouteState:
    state: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state


class Diagnostics:
    """Collects the run's warnings (each said once) and route states."""

    def __init__(self, logger: logging.Logger = vollog) -> None:
        self._logger = logger
        self._said: Set[str] = set()
        self.warnings: List[str] = []
        self.routes: Dict[str, RouteState] = {}

    def warning(self, message: str) -> None:
        if message in self._said:
            return
        self._said.add(message)
        self.warnings.append(message)
        self._logger.warning(message)

    def info(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self._logger.info(message)

    def route(self, name: str, state: str, detail: str = "") -> None:
        """Record how a route (or the module list) fared; the worst report of a name wins."""
        order = (COMPLETE, NOT_ON_THIS_BUILD, SKIPPED, INCOMPLETE, UNAVAILABLE)
        current = self.routes.get(name)
        if current is None or order.index(state) > order.index(current.state):
            self.routes[name] = RouteState(state, detail)
