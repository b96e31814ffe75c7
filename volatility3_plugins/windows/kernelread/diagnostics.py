"""What a run tells the analyst besides its rows: one warning per cause, and the state of each route.

A warning printed twenty times reads as twenty problems. A caller records a problem as its cause
and, where it has one, its subject (an object by its name where the name was read, else by what
it is); the collector says each cause once, at :meth:`Diagnostics.flush`, in one line naming its
first subjects and counting the others (``... and 17 more``). What exactly went wrong with each
subject (where a list broke) is said at info level (``-v``) as it is recorded. A plugin flushes
once its evidence is read (before its first row: the analyst reads the warnings with the rows)
and again at its end; a plugin built on :class:`~.context.KernelContext` that never flushes says
only the info-level details. A look-up that failed is remembered as failed by the caller caching
its result. Route states feed the verdict line at the end of a run.

Standard library only, on purpose: the run diagnostics of any plugin use it, and the crash-dump
layer says its own facts once with the same ``SaidOnce`` (``common/said_once.py``).
"""

import dataclasses
import logging
from typing import Dict, List, Optional, Set

from ...common.said_once import SaidOnce

vollog = logging.getLogger(__name__)

#: Route states, from best to worst.
COMPLETE = "complete"  # walked to its end: absence from it is evidence
INCOMPLETE = "incomplete"  # walked, but broken somewhere: absence proves nothing
UNAVAILABLE = "unavailable"  # could not run at all (no symbol, unreadable head, ...)
SKIPPED = "skipped"  # not asked for (--no-scan)
NOT_ON_THIS_BUILD = "not on this build"  # e.g. ExpCallbackListHead before Windows 8.1
_ORDER = (COMPLETE, NOT_ON_THIS_BUILD, SKIPPED, INCOMPLETE, UNAVAILABLE)
#: States that leave the evidence of a run incomplete (a degraded verdict).
DEGRADING = (INCOMPLETE, UNAVAILABLE)

#: Subjects a warning names before it counts the rest.
MAX_NAMED = 3


@dataclasses.dataclass
class RouteState:
    state: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state


def named(subjects: List[str], limit: int = MAX_NAMED) -> str:
    """``a, b, c and 17 more``."""
    shown = ", ".join(subjects[:limit])
    rest = len(subjects) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


class Diagnostics:
    """Collects the run's warnings (one line per cause) and route states."""

    def __init__(self, logger: logging.Logger = vollog) -> None:
        self._once = SaidOnce(logger)
        #: Causes recorded since the last flush, in the order first recorded, with their new subjects.
        self._pending: Dict[str, List[str]] = {}
        self._subjects: Dict[str, Set[str]] = {}
        #: The warnings said, in order.
        self.warnings: List[str] = []
        self.routes: Dict[str, RouteState] = {}

    def warning(self, cause: str, subject: Optional[str] = None, detail: str = "") -> None:
        """Record ``cause`` (about ``subject`` when given), said at the next :meth:`flush`, once;
        ``detail`` is said now at info level."""
        if detail:
            self._once.log(logging.INFO, f"{cause}: {subject}: {detail}" if subject else f"{cause}: {detail}")
        subjects = self._pending.setdefault(cause, [])
        seen = self._subjects.setdefault(cause, set())
        if subject is not None and subject not in seen:
            seen.add(subject)
            subjects.append(subject)

    def flush(self) -> None:
        """Say every cause recorded since the last flush: one warning each."""
        for cause, subjects in self._pending.items():
            line = f"{cause}: {named(subjects)}" if subjects else cause
            if self._once.log(logging.WARNING, line):
                self.warnings.append(line)
        self._pending.clear()

    def info(self, message: str) -> None:
        self._once.log(logging.INFO, message)

    def route(self, name: str, state: str, detail: str = "") -> None:
        """Record how a route (or the module list) fared; the worst report of a name wins."""
        current = self.routes.get(name)
        if current is None or _ORDER.index(state) > _ORDER.index(current.state):
            self.routes[name] = RouteState(state, detail)

    def degrading_routes(self) -> List[str]:
        """``name state (detail)`` of every route whose state leaves the evidence incomplete."""
        return [f"{name} {state}" for name, state in self.routes.items() if state.state in DEGRADING]
