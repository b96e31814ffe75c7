"""Registrations (``ExRegisterCallback`` blocks): read one, or walk an object's list of them."""

import dataclasses
import logging
from typing import TYPE_CHECKING, Collection, Iterable, List, Optional, Tuple

from ..kernelpool.state import BlockState
from ..kernelread import lists
from ..kernelread.views import Record, Value

if TYPE_CHECKING:
    from .context import CallbackContext
    from .scan_targets import ScannedBlock

vollog = logging.getLogger(__name__)

MAX_REGISTRATIONS = 1024


@dataclasses.dataclass
class Registration:
    """One ``_CALLBACK_REGISTRATION``; a field that could not be read is UnreadableValue.
    Pointers are masked to the layer's width, as Volatility renders them."""

    address: int  # == address of its Link (offset 0)
    callback_object: Value
    routine: Value
    context: Value
    busy: Value
    unregister_waiting: Value
    #: Every byte that could be read is zero (or none could): the block proves nothing.
    zeroed: bool = False

    @classmethod
    def from_record(cls, record: Record) -> "Registration":
        return cls(
            address=record.address,
            callback_object=record.CallbackObject,
            routine=record.CallbackFunction,
            context=record.CallbackContext,
            busy=record.Busy,
            unregister_waiting=record.UnregisterWaiting,
            zeroed=record.zeroed,
        )


@dataclasses.dataclass
class RegistrationList:
    """The registrations an object's ``RegisteredCallbacks`` list holds."""

    registrations: List[Registration]
    #: A walk closed on the head: a block on no list of this object is really off it.
    complete: bool


def read_registration(kernel: "CallbackContext", address: int) -> Registration:
    return Registration.from_record(kernel.registration.read(kernel.reader, address))


def list_registrations(
    kernel: "CallbackContext", registrations_head: int, max_entries: int = MAX_REGISTRATIONS,
    owner: Optional[str] = None,
) -> RegistrationList:
    """Every registration linked from the ``RegisteredCallbacks`` head at ``registrations_head``
    (walked both ways, bounded). ``Link`` is the registration's first member, so each list entry
    address is the registration's address minus the link offset. ``owner`` names the object in
    the warnings (its name where it was read)."""
    link = kernel.registration.offset("Link.Flink")
    walked = lists.walk_list(
        kernel, registrations_head,
        f"registrations of {owner or f'the object whose list head is {registrations_head:#x}'}", max_entries
    )
    return RegistrationList([read_registration(kernel, entry - link) for entry in walked.entries], walked.complete)


def loose_registrations(
    kernel: "CallbackContext",
    scanned: Iterable["ScannedBlock"],
    linked: Collection[int],
    known_objects: Collection[int],
) -> List[Tuple[Registration, BlockState]]:
    """The *loose* registrations: blocks the pool scan found that no walked list holds, whose
    ``CallbackObject`` names a known callback object; with their allocation state, sorted by
    the object they name, then by address. A block on a list is reported by its walk, never
    twice; a block naming no known object is dropped as noise (said at debug level)."""
    found: List[Tuple[Registration, BlockState]] = []
    dropped = 0
    for block in sorted(set(scanned), key=lambda b: b.address):
        if block.address in linked:
            continue
        registration = read_registration(kernel, block.address)
        owner = registration.callback_object
        if isinstance(owner, int) and owner in known_objects:
            found.append((registration, block.state))
        else:
            dropped += 1
    if dropped:
        vollog.debug(f"{dropped} loose registration blocks name no known callback object: not reported")
    found.sort(key=lambda item: (int(item[0].callback_object), item[0].address))
    return found
