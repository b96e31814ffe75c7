"""From an image to its rows: the routes and the scan run once, then rows come one at a time.

:func:`collect` does the eager part (pool scan, routes, merge) so that a plugin can refuse an
image before printing anything; :meth:`Report.rows` then yields each object's rows (its list
walked, every registration attributed and classified) and finally the loose registrations.
With a known-good baseline, the rows are compared with it once all of them are known (an
unnamed object's key needs all its registrations, loose ones included) and then yielded in the
same order.
"""

import dataclasses
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Set

from volatility3.framework import constants

from ...schema import baseline
from ..kernelread.attribution import Attributor
from . import classify, expected, merge, registrations, rows, scan_targets
from .rows import Row

if TYPE_CHECKING:
    from .context import CallbackContext


@dataclasses.dataclass
class Counts:
    """What the rows of a whole image add up to (counted before any filtering)."""

    objects: int = 0
    registrations: int = 0
    loose: int = 0
    flagged: int = 0
    suspicious: int = 0
    by_flag: Dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, row: rows.Row) -> None:
        self.flagged += bool(row.flags)
        self.suspicious += row.suspicious
        for flag in row.flags:
            self.by_flag[flag] = self.by_flag.get(flag, 0) + 1


@dataclasses.dataclass
class Report:
    kernel: "CallbackContext"
    inventory: merge.ObjectInventory
    scan: scan_targets.ScanResult
    attributor: Attributor
    rules: expected.ExpectedRegistrants
    counts: Counts = dataclasses.field(default_factory=Counts)
    #: Known-good registrations to compare with (``--baseline``); None: no comparison.
    known_good: Optional[baseline.Baseline] = None

    def rows(self) -> Iterator[rows.Row]:
        """Every row: each object's, in address order, then the loose registrations grouped by
        the object they name, with the known-good comparison's flag when a baseline is given.
        Without one, only addresses of linked blocks are kept, so memory stays flat with the
        number of rows; with one, the rows are held until all are known."""
        found = self._classified_rows()
        if self.known_good is not None:
            held = list(found)
            verdicts = self.known_good.judge([row.view() for row in held])
            for row, in_baseline in zip(held, verdicts):
                row.flags = classify.classify_baseline(row.flags, in_baseline)
            found = iter(held)
        for row in found:
            self.counts.add(row)
            yield row

    def _classified_rows(self) -> Iterator[Row]:
        counts = self.counts
        counts.objects = len(self.inventory.objects)
        linked: Set[int] = set()
        # A loose registration may belong to any object's list (its CallbackObject can lie):
        # it is off every list only when every object's list was walked to its end.
        every_list_complete = True
        for record in self.inventory.objects:
            listed = registrations.list_registrations(self.kernel, record.registrations_head)
            counts.registrations += len(listed.registrations)
            if self.scan.ran:
                linked.update(reg.address for reg in listed.registrations)
                every_list_complete &= listed.complete and record.body_readable
            yield from rows.object_rows(record, listed, self.attributor, self.rules)
        if not self.scan.ran:
            return
        by_address = self.inventory.by_address()
        for registration, state in registrations.loose_registrations(
            self.kernel, self.scan.registrations, linked, set(by_address)
        ):
            counts.loose += 1
            owner = int(registration.callback_object)
            yield rows.loose_row(by_address[owner], registration, state, every_list_complete, self.attributor)


def collect(
    kernel: "CallbackContext",
    scan: bool = True,
    progress_callback: Optional[constants.ProgressCallback] = None,
    full_scan: bool = False,
    known_good: Optional[baseline.Baseline] = None,
) -> Report:
    """Run the pool scan (unless ``scan`` is False; over the whole kernel half with
    ``full_scan``) and every route, once; rows are compared with ``known_good`` when given."""
    modules = kernel.loaded_modules
    result = scan_targets.ScanResult()
    if scan:
        result = scan_targets.scan_pool(
            kernel,
            progress_callback=progress_callback,
            images=[(module.base, module.size) for module in modules.modules],
            full=full_scan,
        )
    else:
        result = scan_targets.not_scanned(kernel, "--no-scan")
    inventory = merge.collect_objects(kernel, scanned=[(block.address, block.state) for block in result.objects])
    attributor = Attributor(kernel, modules, hidden_modules=result.hidden_module_candidates())
    return Report(kernel, inventory, result, attributor, expected.load(), known_good=known_good)
