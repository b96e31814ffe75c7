"""From what the plugin's steps return to its rows, one row at a time, and what they add up to.

``windows.callbackobjects`` runs its public classmethods in order (build the run context, scan
the pool, list the objects, each object's registrations and the loose registrations); a
:class:`Report` turns what they return into classified rows. It is built once the objects are
known; :meth:`Report.read_registrations` reads every object's registrations and the loose ones,
and :meth:`Report.examine` classifies every row (each registration attributed, its routine's
code examined, the known-good comparison made) and records the routes the rows needed
(hidden-image traces, code, exception directories), all before any row is printed: the plugin
can refuse an image, and say on every row whether the image's evidence is complete
(``Evidence``, which those routes count in), before printing anything. :meth:`Report.rows` then
yields the rows (each object's, then the loose registrations) and counts them for the verdict
line. The rows are held until they are printed (a few hundred bytes each; a busy machine has a
few hundred). With a known-good baseline the rows are compared with it once all of them are
known (an unnamed object's key needs all its registrations, loose ones included).
"""

import dataclasses
from typing import TYPE_CHECKING, Callable, Collection, Dict, Iterator, List, Optional, Tuple

from ...schema import baseline, columns
from ..kernelpool.state import BlockState
from ..kernelread import diagnostics
from ..kernelread.attribution import Attributor
from ..kernelread.image_traces import OtherImages
from . import classify, expected, rows
from .inventory import CallbackObjectRecord
from .landing import RoutineCode
from .registrations import Registration, RegistrationList
from .rows import Row

if TYPE_CHECKING:
    from .context import CallbackContext
    from .scan_targets import ScanResult

#: An object's registrations (the plugin's ``list_registrations``).
RegistrationsOf = Callable[[CallbackObjectRecord], RegistrationList]
#: The loose registrations, given the registrations the objects' lists hold (the plugin's
#: ``list_loose_registrations``).
LooseOf = Callable[[Collection[int]], List[Tuple[Registration, BlockState]]]
#: The route of the verdict line that says whether every object's registrations were read.
ROUTE_REGISTRATIONS = "registrations"


@dataclasses.dataclass
class Counts:
    """What the rows of a whole image add up to (counted before any filtering)."""

    objects: int = 0
    registrations: int = 0
    loose: int = 0
    suspicious: int = 0
    by_flag: Dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.suspicious += row.suspicious
        for flag in row.flags:
            self.by_flag[flag] = self.by_flag.get(flag, 0) + 1


class Report:
    """One image's objects and scan, turned into rows (see the module docstring)."""

    def __init__(
        self,
        kernel: "CallbackContext",
        objects: List[CallbackObjectRecord],
        scan: "ScanResult",
        known_good: Optional[baseline.Baseline] = None,
    ) -> None:
        self.kernel = kernel
        self.objects = objects
        self.scan = scan
        #: Known-good registrations to compare with (``--baseline``); None: no comparison.
        self.known_good = known_good
        #: Images the module list lacks, from every other trace (read on first need).
        self.other_images = OtherImages(kernel, kernel.loaded_modules, scan.image_traces(),
                                        len(scan.driver_objects) if scan.ran else None)
        self.attributor = Attributor(kernel, kernel.loaded_modules, hidden_modules=self.other_images)
        #: What each routine's code does (decoded once per routine).
        self.code = RoutineCode(kernel, self.attributor)
        self.rules = expected.load()
        self.counts = Counts(objects=len(objects))
        #: Each object's registrations (in the order of ``objects``) and the loose ones, once read.
        self.listed: List[RegistrationList] = []
        self.loose: List[Tuple[Registration, BlockState]] = []
        #: Every row, classified, once :meth:`examine` ran.
        self._examined: Optional[List[Row]] = None

    def read_registrations(self, registrations_of: RegistrationsOf, loose_of: LooseOf) -> None:
        """Read every object's registrations and (with a scan) the loose ones, and record how
        the reading fared as the ``registrations`` route: incomplete when a list was not walked
        to its end or a registration on it reads as zeros (what it hides cannot be judged)."""
        self.listed = [registrations_of(record) for record in self.objects]
        self.counts.registrations = sum(len(listed.registrations) for listed in self.listed)
        unclosed = sum(not listed.complete for listed in self.listed)
        unreadable = sum(reg.zeroed for listed in self.listed for reg in listed.registrations)
        detail = f"{len(self.listed)} lists"
        if unclosed:
            detail += f", {unclosed} not walked to their end"
        if unreadable:
            detail += f", {unreadable} registrations unreadable"
        state = diagnostics.INCOMPLETE if unclosed or unreadable else diagnostics.COMPLETE
        self.kernel.diagnostics.route(ROUTE_REGISTRATIONS, state, detail)
        if self.scan.ran:
            linked = {reg.address for listed in self.listed for reg in listed.registrations}
            self.loose = loose_of(linked)
            self.counts.loose = len(self.loose)

    @property
    def evidence_causes(self) -> List[str]:
        """Why the image's evidence is incomplete, one cause each (what the image file lacks, the
        routes that did not close or could not run); empty when it is complete."""
        return [str(shortfall) for shortfall in self.kernel.image_shortfalls] + self.kernel.diagnostics.degrading_routes()

    @property
    def evidence(self) -> str:
        """The ``Evidence`` column of every row."""
        return columns.DEGRADED if self.evidence_causes else columns.COMPLETE

    def examine(self) -> None:
        """Classify every row and record the routes they needed (the hidden-image traces, the
        code, the exception directories), so that :attr:`evidence` counts those routes in before
        the first row is printed. Needs :meth:`read_registrations` first; :meth:`rows` calls it
        when nobody did."""
        held = list(self._classified_rows())
        if self.known_good is not None:
            verdicts = self.known_good.judge([row.view() for row in held])
            for row, in_baseline in zip(held, verdicts):
                row.flags = classify.classify_baseline(row.flags, in_baseline)
        self.other_images.record_routes()
        self.code.record_routes()
        self._examined = held

    def rows(self) -> Iterator[Row]:
        """Every row: each object's, in address order, then the loose registrations grouped by
        the object they name, with the known-good comparison's flag when a baseline is given."""
        if self._examined is None:
            self.examine()
        assert self._examined is not None
        for row in self._examined:
            self.counts.add(row)
            yield row

    def _classified_rows(self) -> Iterator[Row]:
        for record, listed in zip(self.objects, self.listed):
            yield from rows.object_rows(record, listed, self.attributor, self.rules, self.code)
        if not self.loose:
            return
        # A loose registration may belong to any object's list (its CallbackObject can lie):
        # it is off every list only when every object's list was walked to its end.
        every_list_complete = all(
            listed.complete and record.body_readable for record, listed in zip(self.objects, self.listed)
        )
        by_address = {record.address: record for record in self.objects}
        for registration, state in self.loose:
            owner = int(registration.callback_object)
            yield rows.loose_row(by_address[owner], registration, state, every_list_complete, self.attributor, self.code)
