"""From what the plugin's steps return to its rows, one row at a time, and what they add up to.

``windows.callbackobjects`` runs its public classmethods in order (build the run context, scan
the pool, list the objects, then, while rows stream, each object's registrations and finally the
loose registrations); a :class:`Report` turns what they return into classified rows. It is built
once the objects are known, so that the plugin can refuse an image before printing anything;
:meth:`Report.rows` then yields each object's rows (every registration attributed, its
routine's code examined, classified) and the loose registrations, counts them for the verdict
line and records the routes the rows needed (hidden-image traces, code, exception directories). With a known-good
baseline the rows are compared with it once all of them are known (an unnamed object's key needs
all its registrations, loose ones included) and then yielded in the same order.
"""

import dataclasses
from typing import TYPE_CHECKING, Callable, Collection, Dict, Iterator, List, Optional, Set, Tuple

from ...schema import baseline
from ..kernelpool.state import BlockState
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

    def rows(self, registrations_of: RegistrationsOf, loose_of: LooseOf) -> Iterator[Row]:
        """Every row: each object's, in address order, then the loose registrations grouped by
        the object they name, with the known-good comparison's flag when a baseline is given.
        Without one, only addresses of linked blocks are kept, so memory stays flat with the
        number of rows; with one, the rows are held until all are known."""
        found = self._classified_rows(registrations_of, loose_of)
        if self.known_good is not None:
            held = list(found)
            verdicts = self.known_good.judge([row.view() for row in held])
            for row, in_baseline in zip(held, verdicts):
                row.flags = classify.classify_baseline(row.flags, in_baseline)
            found = iter(held)
        for row in found:
            self.counts.add(row)
            yield row
        self.finish()

    def finish(self) -> None:
        """The routes the rows needed, once every row is known (the verdict line names them)."""
        self.other_images.record_routes()
        self.code.record_routes()

    def _classified_rows(self, registrations_of: RegistrationsOf, loose_of: LooseOf) -> Iterator[Row]:
        counts = self.counts
        linked: Set[int] = set()
        # A loose registration may belong to any object's list (its CallbackObject can lie):
        # it is off every list only when every object's list was walked to its end.
        every_list_complete = True
        for record in self.objects:
            listed = registrations_of(record)
            counts.registrations += len(listed.registrations)
            if self.scan.ran:
                linked.update(reg.address for reg in listed.registrations)
                every_list_complete &= listed.complete and record.body_readable
            yield from rows.object_rows(record, listed, self.attributor, self.rules, self.code)
        if not self.scan.ran:
            return
        by_address = {record.address: record for record in self.objects}
        for registration, state in loose_of(linked):
            counts.loose += 1
            owner = int(registration.callback_object)
            yield rows.loose_row(by_address[owner], registration, state, every_list_complete, self.attributor, self.code)
