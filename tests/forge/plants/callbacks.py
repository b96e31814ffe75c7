"""Callback objects (``ExCreateCallback``) and their registrations (``ExRegisterCallback``).

``CALLBACK_OBJECT`` and ``CALLBACK_REGISTRATION`` are in no PDB. Their layouts below are
written down from the reverse-engineering notes (../shared/notes/callback-objects.md), on
purpose independently of the plugin's own ISF, so that a mistake in one shows up against the
other.

Lists are kept on the Python side and written in one pass by :meth:`CallbackPlanter.link`, so
that an entry left out of a list keeps stale ``Flink``/``Blink`` pointing into it, as an entry
a rootkit unlinked does.
"""

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..allocators.pool import PoolBlock
from ..kernel.machine import KernelMachine
from ..kernel.objects import KernelObject, ObjectManager
from ..memory.physical import canonical
from ..profiles.layout import pointer_format

CALLBACK_SIGNATURE = 0x6C6C6143  # "Call"
REGISTRATION_TAG = b"CBRe"


@dataclass(frozen=True)
class CallbackLayout:
    object_size: int
    signature: int
    lock: int
    registered_callbacks: int
    allow_multiple: int
    callback_list: Optional[int]
    registration_size: int
    callback_object: int
    function: int
    context: int
    busy: int
    unregister_waiting: int


X64_SINCE_8_1 = CallbackLayout(0x38, 0x00, 0x08, 0x10, 0x20, 0x28, 0x30, 0x10, 0x18, 0x20, 0x28, 0x2C)
X64_BEFORE_8_1 = CallbackLayout(0x28, 0x00, 0x08, 0x10, 0x20, None, 0x30, 0x10, 0x18, 0x20, 0x28, 0x2C)
X86_SINCE_8_1 = CallbackLayout(0x1C, 0x00, 0x04, 0x08, 0x10, 0x14, 0x1C, 0x08, 0x0C, 0x10, 0x14, 0x18)
X86_BEFORE_8_1 = CallbackLayout(0x14, 0x00, 0x04, 0x08, 0x10, None, 0x1C, 0x08, 0x0C, 0x10, 0x14, 0x18)


def callback_layout(is_64bit: bool, has_callback_list: bool) -> CallbackLayout:
    """The notes' layout for this architecture and Windows generation (8.1+ adds ExpCallbackList)."""
    if is_64bit:
        return X64_SINCE_8_1 if has_callback_list else X64_BEFORE_8_1
    return X86_SINCE_8_1 if has_callback_list else X86_BEFORE_8_1

BUILTIN_GLOBALS = {
    "ExCbPowerState": "PowerState",
    "ExCbSetSystemTime": "SetSystemTime",
    "ExCbSetSystemState": "SetSystemState",
    "ExCbProcessorAdd": "ProcessorAdd",
    "ExCbPhase1InitComplete": "Phase1InitComplete",
    "ExCbEnlightenmentState": "EnlightenmentState",
    "ExCbSeImageVerificationDriverInfo": "SeImageVerificationDriverInfo",
}


@dataclass(eq=False)
class Registration:
    """One ExRegisterCallback block, and how it is (or is not) linked."""

    address: int
    block: PoolBlock
    owner: Optional["CallbackObject"]  # the object whose list holds it
    backlink: int  # what its CallbackObject field says
    routine: int
    context: int
    busy: int = 0
    unregister_waiting: bool = False
    linked: bool = True
    freed: bool = False  # unregistered: off its list (stale links) and its block freed
    # False once a planted corruption cuts the list before it: a walker cannot reach it.
    reachable: bool = True

    @property
    def block_header(self) -> int:
        """Its pool header's address (the block starts there)."""
        return self.block.header


@dataclass(eq=False)
class CallbackObject:
    """One ExCreateCallback object and the routes that reach it."""

    name: Optional[str]  # short name under \\Callback, None when unnamed
    allow_multiple: bool
    kernel_object: KernelObject
    in_directory: bool
    in_callback_list: bool
    signature: int = CALLBACK_SIGNATURE
    name_readable: bool = True
    registrations: List[Registration] = field(default_factory=list)
    # Deleted (ObDeleteObject): off every list with stale links, its pool blocks freed.
    deleted: bool = False

    @property
    def address(self) -> int:
        return self.kernel_object.body

    @property
    def full_name(self) -> Optional[str]:
        return None if self.name is None or not self.name_readable else f"\\Callback\\{self.name}"


class CallbackPlanter:
    """Creates callback objects and registrations and writes the lists that join them."""

    def __init__(self, machine: KernelMachine, objects: ObjectManager, kernel_base: int) -> None:
        self.machine = machine
        self.objects = objects
        self.kernel_base = kernel_base
        self.layout = callback_layout(machine.layout.is_64bit, machine.layout.has_callback_list)
        self.directory = objects.create_directory("Callback")
        self.callback_objects: List[CallbackObject] = []
        self.loose_registrations: List[Registration] = []
        self.globals: Dict[str, Optional[CallbackObject]] = {}

    # -- creation ------------------------------------------------------------------------

    def create(
        self,
        name: Optional[str],
        allow_multiple: bool = True,
        in_directory: bool = True,
        in_callback_list: bool = True,
        creator_info: bool = False,
        signature: int = CALLBACK_SIGNATURE,
        name_length: Optional[int] = None,
        deleted: bool = False,
    ) -> CallbackObject:
        """``deleted``: an object that existed and is gone (ExpDeleteCallback took it off
        ExpCallbackListHead, its name left \\Callback): its blocks are freed at build time."""
        if deleted:
            in_directory = in_callback_list = False
        kernel_object = self.objects.create_object(
            "Callback", self.layout.object_size, name=name, creator_info=creator_info,
            permanent=name is not None, name_length=name_length,
        )
        body = bytearray(self.layout.object_size)
        struct.pack_into("<I", body, self.layout.signature, signature)
        body[self.layout.allow_multiple] = 1 if allow_multiple else 0
        self.machine.space.write(kernel_object.body, bytes(body))
        if name is not None and in_directory:
            self.objects.insert(self.directory, kernel_object)
        callback = CallbackObject(
            name, allow_multiple, kernel_object, in_directory and name is not None,
            in_callback_list and self.layout.callback_list is not None, signature,
            name_readable=name_length is None, deleted=deleted,
        )
        self.callback_objects.append(callback)
        return callback

    def register(
        self,
        callback: Optional[CallbackObject],
        routine: int,
        context: int = 0,
        busy: int = 0,
        unregister_waiting: bool = False,
        backlink: Optional[int] = None,
        linked: bool = True,
        freed: bool = False,
    ) -> Registration:
        """A registration block; ``backlink`` may name another object than the list owner."""
        """``freed``: a registration that was undone (ExUnregisterCallback): off its object's list
        with stale links, its block freed at build time, its contents stale but readable."""
        block = self.machine.pool.allocate(self.layout.registration_size, REGISTRATION_TAG, role="registration")
        if backlink is None:
            backlink = callback.address if callback is not None else 0
        registration = Registration(
            block.body, block, callback if linked else None, backlink, routine, context,
            busy, unregister_waiting, linked and callback is not None and not freed, freed,
        )
        data = bytearray(self.layout.registration_size)
        pointer = pointer_format(self.machine.layout.pointer_size)
        struct.pack_into(pointer, data, self.layout.callback_object, canonical(backlink))
        struct.pack_into(pointer, data, self.layout.function, canonical(routine))
        struct.pack_into(pointer, data, self.layout.context, canonical(context))
        struct.pack_into("<I", data, self.layout.busy, busy)
        data[self.layout.unregister_waiting] = 1 if unregister_waiting else 0
        self.machine.space.write(block.body, bytes(data))
        if callback is not None:
            callback.registrations.append(registration)
        else:
            self.loose_registrations.append(registration)
        return registration

    def swap_routine(self, registration: Registration, routine: int) -> None:
        """A registration whose routine was overwritten in place (a hijack, or an EDR's
        registration pointed at a bare ``ret`` to silence it)."""
        registration.routine = routine
        pointer = pointer_format(self.machine.layout.pointer_size)
        self.machine.space.write(registration.address + self.layout.function, struct.pack(pointer, canonical(routine)))

    def point_global(self, global_name: str, callback: Optional[CallbackObject]) -> None:
        self.globals[global_name] = callback

    # -- linking -------------------------------------------------------------------------

    def link(self) -> None:
        """Write ExpCallbackListHead, each RegisteredCallbacks list and the ExCb* globals."""
        if self.layout.callback_list is not None:
            head = self.kernel_base + self.machine.layout.symbol("ExpCallbackListHead")
            entries = [(c.address + self.layout.callback_list, c.in_callback_list) for c in self.callback_objects]
            self.machine.write_list(head, entries)
        for callback in self.callback_objects:
            head = callback.address + self.layout.registered_callbacks
            entries = [(r.address, r.linked) for r in callback.registrations]
            self.machine.write_list(head, entries)
        for global_name, short_name in BUILTIN_GLOBALS.items():
            if not self.machine.layout.has_symbol(global_name):
                continue
            if global_name not in self.globals:
                self.globals[global_name] = next((c for c in self.live_objects if c.name == short_name), None)
            target = self.globals[global_name]
            self.machine.write_pointer(self.kernel_base + self.machine.layout.symbol(global_name), target.address if target else 0)

    @property
    def live_objects(self) -> List[CallbackObject]:
        return [c for c in self.callback_objects if not c.deleted]

    def globals_pointing_at(self, callback: CallbackObject) -> List[str]:
        return sorted(name for name, target in self.globals.items() if target is callback)
