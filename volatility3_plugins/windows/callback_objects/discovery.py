"""The routes to callback objects: ``list`` (nt!ExpCallbackListHead, 8.1+), ``directory``
(the ``\\Callback`` object directory) and ``global`` (the ``nt!ExCb*`` pointers).

Each route returns object BODY addresses masked to the kernel layer's address width (the way
Volatility renders kernel pointers), or None when the route could not run at all, so the
caller can tell "route found nothing" from "route unavailable".
"""

import dataclasses
import logging
from typing import Dict, Iterator, List, Optional, Tuple

from volatility3.framework import constants, exceptions, interfaces
from volatility3.plugins.windows import handles

from volatility3.plugins.windows.callback_objects import rawmem, structures, walk

vollog = logging.getLogger(__name__)

ROUTE_LIST = "list"
ROUTE_DIRECTORY = "directory"
ROUTE_GLOBAL = "global"
ROUTE_SCAN = "scan"
#: The fixed order of route names in the FoundBy column.
ROUTE_ORDER = (ROUTE_LIST, ROUTE_DIRECTORY, ROUTE_GLOBAL, ROUTE_SCAN)

CALLBACK_DIRECTORY = "Callback"
CALLBACK_TYPE = "Callback"
DIRECTORY_TYPE = "Directory"
NAME_PREFIX = "\\Callback\\"

#: Kernel pointers to its built-in callback objects; the object name is the symbol minus ExCb.
GLOBAL_SYMBOLS = (
    "ExCbPowerState",
    "ExCbSetSystemTime",
    "ExCbSetSystemState",
    "ExCbProcessorAdd",
    "ExCbPhase1InitComplete",
    "ExCbEnlightenmentState",
    "ExCbSeImageVerificationDriverInfo",
)

HASH_BUCKETS = 37
MAX_DIRECTORY_ENTRIES = 4096
MAX_OBJECTS_PER_LIST = 4096


def format_found_by(routes) -> str:
    """``list+directory+global``: the routes that saw an object, in the fixed order."""
    rank = {route: index for index, route in enumerate(ROUTE_ORDER)}
    return "+".join(sorted(set(routes), key=lambda r: (rank.get(r, len(rank)), r)))


def expected_global_name(symbol_name: str) -> str:
    """``ExCbPowerState`` -> ``\\Callback\\PowerState``."""
    bare = symbol_name[4:] if symbol_name.startswith("ExCb") else symbol_name
    return NAME_PREFIX + bare


def _kernel_address(kernel: interfaces.context.ModuleInterface, symbol: str) -> int:
    return kernel.offset + kernel.get_symbol(symbol).address


def _kernel_pointer_size(context: interfaces.context.ContextInterface, kernel_module_name: str) -> int:
    kernel = context.modules[kernel_module_name]
    return context.symbol_space.get_type(
        kernel.symbol_table_name + constants.BANG + "pointer"
    ).size


# --- list route --------------------------------------------------------------------------


@dataclasses.dataclass
class ListRoute:
    objects: List[int]
    walk: walk.ListWalk


def from_callback_list(
    context: interfaces.context.ContextInterface,
    kernel_module_name: str,
    callback_table_name: str,
    max_objects: int = MAX_OBJECTS_PER_LIST,
) -> Optional[ListRoute]:
    """Objects linked into ``nt!ExpCallbackListHead``; None before 8.1 or if the head is
    unreadable (then membership is unknown and ``unlinked_object`` must not be raised)."""
    kernel = context.modules[kernel_module_name]
    if not kernel.has_symbol(structures.LIST_HEAD_SYMBOL):
        vollog.info("No nt!ExpCallbackListHead (before Windows 8.1): list route skipped")
        return None
    if not structures.table_has_member(
        context, callback_table_name, "_CALLBACK_OBJECT", "ExpCallbackList"
    ):
        vollog.warning("Callback object layout has no ExpCallbackList: list route skipped")
        return None
    link = structures.member_offset(
        context, callback_table_name, "_CALLBACK_OBJECT", "ExpCallbackList"
    )
    walked = walk.walk_list(
        context,
        kernel.layer_name,
        _kernel_address(kernel, structures.LIST_HEAD_SYMBOL),
        _kernel_pointer_size(context, kernel_module_name),
        max_entries=max_objects,
        what="nt!ExpCallbackListHead",
    )
    if walked.head_unreadable:
        vollog.warning("nt!ExpCallbackListHead unreadable: list route skipped")
        return None
    mask = context.layers[kernel.layer_name].address_mask
    return ListRoute(objects=[(entry - link) & mask for entry in walked.entries], walk=walked)


# --- directory route ---------------------------------------------------------------------


@dataclasses.dataclass
class DirectoryEntry:
    body: int
    name: Optional[str]
    type_name: Optional[str]


class ObjectHeaders:
    """Names and types of object bodies, as Volatility's ``_OBJECT_HEADER`` helpers read them.

    ``get_name()``/``get_object_type()`` build several objects per call; thousands of objects
    (directory entries, scan hits) make that the bulk of a run. So the same arithmetic
    (``ObpInfoMaskToOffset``, the ``ObHeaderCookie`` decoding with the second byte of the
    header address, the ``_UNICODE_STRING`` sanity checks of ``get_name``) is done here on
    bytes from the page cache, with offsets from the kernel's symbol table; when a piece is
    missing (no ``TypeIndex``, no offset table) the Volatility helpers are used instead.
    """

    NAME_INFO_BIT = 0x02

    def __init__(self, context: interfaces.context.ContextInterface, kernel_module_name: str):
        self._context = context
        self._kernel = context.modules[kernel_module_name]
        self._mask = context.layers[self._kernel.layer_name].address_mask
        header_type = self._kernel.get_type("_OBJECT_HEADER")
        self._body_offset = header_type.relative_child_offset("Body")
        self.type_map = handles.Handles.get_type_map(context, kernel_module_name)
        # None before Windows 10 (TypeIndex stored plain), which get_object_type handles.
        self.cookie = handles.Handles.find_cookie(context, kernel_module_name)
        self._cookie_value = int(self.cookie) if self.cookie is not None else None
        self.reader = rawmem.shared_reader(context, self._kernel.layer_name)
        self.pointer_size = _kernel_pointer_size(context, kernel_module_name)
        self.fast = False
        try:
            table = self._kernel.symbol_table_name + constants.BANG
            self._info_mask = rawmem.member_field(context, table + "_OBJECT_HEADER", "InfoMask")
            self._type_index = rawmem.member_field(context, table + "_OBJECT_HEADER", "TypeIndex")
            self._name_offset = self._kernel.get_type(
                "_OBJECT_HEADER_NAME_INFO"
            ).relative_child_offset("Name")
            self._length = rawmem.member_field(context, table + "_UNICODE_STRING", "Length")
            self._maximum = rawmem.member_field(context, table + "_UNICODE_STRING", "MaximumLength")
            self._buffer = rawmem.member_field(context, table + "_UNICODE_STRING", "Buffer")
            self.info_mask_to_offset = self._read_offset_table()
            self.fast = True
        except (exceptions.SymbolError, KeyError, AttributeError, exceptions.InvalidAddressException) as excp:
            vollog.debug(f"Object headers read through Volatility objects only ({excp})")
            self.info_mask_to_offset = b""

    def _read_offset_table(self) -> bytes:
        """``nt!ObpInfoMaskToOffset``: distance from the object header back to each optional
        header, indexed by ``InfoMask & (bit | bit - 1)``. 256 entries on current builds, 128
        where the bytes beyond are unmapped."""
        address = self._kernel.offset + self._kernel.get_symbol("ObpInfoMaskToOffset").address
        for length in (0x100, 0x80):
            try:
                return self.reader.read(address, length)
            except exceptions.InvalidAddressException:
                continue
        raise exceptions.InvalidAddressException(
            self._kernel.layer_name, address, "ObpInfoMaskToOffset unreadable"
        )

    @property
    def body_offset(self) -> int:
        return self._body_offset

    def header(self, body: int) -> interfaces.objects.ObjectInterface:
        return self._kernel.object(
            "_OBJECT_HEADER", offset=(body - self._body_offset) & self._mask, absolute=True
        )

    def name(self, body: int) -> Optional[str]:
        if self.fast:
            return self._fast_name((body - self._body_offset) & self._mask)
        try:
            return self.header(body).get_name()
        except (exceptions.InvalidAddressException, ValueError, AttributeError) as excp:
            vollog.log(constants.LOGLEVEL_VVV, f"name of object {body:#x} unreadable: {excp}")
            return None

    def type_name(self, body: int) -> Optional[str]:
        if self.fast:
            return self.type_at_header((body - self._body_offset) & self._mask)
        try:
            return self.header(body).get_object_type(self.type_map, self.cookie)
        except (exceptions.InvalidAddressException, ValueError, AttributeError) as excp:
            vollog.log(constants.LOGLEVEL_VVV, f"type of object {body:#x} unreadable: {excp}")
            return None

    def type_at_header(self, header: int, info: Optional[bytes] = None) -> Optional[str]:
        """Type name of the object whose ``_OBJECT_HEADER`` is at ``header`` (fast path only).
        ``info`` may carry the header's bytes already read."""
        try:
            if info is None:
                info = self.reader.read(header, self._body_offset)
        except exceptions.InvalidAddressException:
            return None
        index = self._type_index.get(info)
        if self._cookie_value is not None:
            # as _OBJECT_HEADER.get_object_type: the second byte of the header address
            index = ((header >> 8) ^ self._cookie_value ^ index) & 0xFF
        return self.type_map.get(index)

    def info_mask_at_header(self, info: bytes) -> int:
        return self._info_mask.get(info)

    def _fast_name(self, header: int) -> Optional[str]:
        """``get_name()`` on bytes: None when absent or when the string fails its checks."""
        try:
            mask = self.reader.u8(header + self._info_mask.offset)
            if not mask & self.NAME_INFO_BIT:
                return None
            offset = self.info_mask_to_offset[mask & (self.NAME_INFO_BIT | (self.NAME_INFO_BIT - 1))]
            if offset == 0:
                return None
            string = header - offset + self._name_offset
            data = self.reader.read(string, self._buffer.offset + self._buffer.size)
            length, maximum = self._length.get(data), self._maximum.get(data)
            if length == 0 or maximum == 0 or length > maximum:
                return None
            buffer = self._buffer.get(data) & self._mask
            text = self.reader.read(buffer, length).decode("utf-16-le", errors="replace")
        except exceptions.InvalidAddressException as excp:
            vollog.log(constants.LOGLEVEL_VVV, f"name of header {header:#x} unreadable: {excp}")
            return None
        end = text.find("\x00")
        return text if end < 0 else text[:end]


def directory_entries(
    context: interfaces.context.ContextInterface,
    kernel_module_name: str,
    directory_body: int,
    headers: ObjectHeaders,
    max_entries: int = MAX_DIRECTORY_ENTRIES,
) -> Iterator[DirectoryEntry]:
    """Every object of one ``_OBJECT_DIRECTORY``: 37 hash buckets, each a chain of
    ``_OBJECT_DIRECTORY_ENTRY`` through ``ChainLink``; bounded and cycle-safe."""
    kernel = context.modules[kernel_module_name]
    reader = headers.reader
    mask = reader.mask
    pointer_size = headers.pointer_size
    buckets = (directory_body & mask) + kernel.get_type("_OBJECT_DIRECTORY").relative_child_offset(
        "HashBuckets"
    )
    entry_type = kernel.get_type("_OBJECT_DIRECTORY_ENTRY")
    chain_offset = entry_type.relative_child_offset("ChainLink")
    object_offset = entry_type.relative_child_offset("Object")
    seen = set()
    for bucket in range(HASH_BUCKETS):
        try:
            entry_address = reader.pointer(buckets + bucket * pointer_size, pointer_size)
        except exceptions.InvalidAddressException:
            vollog.debug(f"directory {directory_body:#x} bucket {bucket} unreadable")
            continue
        while entry_address:
            if entry_address in seen:
                vollog.debug(f"directory {directory_body:#x}: chain cycle at {entry_address:#x}")
                break
            if len(seen) >= max_entries:
                vollog.warning(f"directory {directory_body:#x}: bound of {max_entries} reached")
                return
            seen.add(entry_address)
            try:
                body = reader.pointer(entry_address + object_offset, pointer_size)
                next_address = reader.pointer(entry_address + chain_offset, pointer_size)
            except exceptions.InvalidAddressException:
                vollog.debug(f"directory entry {entry_address:#x} unreadable")
                break
            if body:
                yield DirectoryEntry(body, headers.name(body), headers.type_name(body))
            entry_address = next_address


def find_callback_directory(
    context: interfaces.context.ContextInterface,
    kernel_module_name: str,
    headers: ObjectHeaders,
) -> Optional[int]:
    """Body address of ``\\Callback`` (name ``Callback``, type ``Directory`` in the root)."""
    kernel = context.modules[kernel_module_name]
    try:
        root = int(
            kernel.object("pointer", offset=kernel.get_symbol("ObpRootDirectoryObject").address)
        )
    except exceptions.SymbolError:
        vollog.warning("No nt!ObpRootDirectoryObject: directory route skipped")
        return None
    except exceptions.InvalidAddressException:
        vollog.warning("nt!ObpRootDirectoryObject unreadable: directory route skipped")
        return None
    if not root:
        vollog.warning("nt!ObpRootDirectoryObject is null: directory route skipped")
        return None
    for entry in directory_entries(context, kernel_module_name, root, headers):
        if entry.name == CALLBACK_DIRECTORY and entry.type_name == DIRECTORY_TYPE:
            return entry.body
    vollog.warning("No \\Callback directory in the root directory: directory route skipped")
    return None


@dataclasses.dataclass
class DirectoryRoute:
    directory: int  # body of \Callback
    objects: Dict[int, Optional[str]]  # body -> full name (None: unnamed)


def from_directory(
    context: interfaces.context.ContextInterface,
    kernel_module_name: str,
    headers: Optional[ObjectHeaders] = None,
) -> Optional[DirectoryRoute]:
    """Objects of type ``Callback`` in ``\\Callback``; None when the directory is not found."""
    try:
        headers = headers or ObjectHeaders(context, kernel_module_name)
    except (exceptions.SymbolError, exceptions.InvalidAddressException) as excp:
        vollog.warning(f"Object types unavailable ({excp}): directory route skipped")
        return None
    directory = find_callback_directory(context, kernel_module_name, headers)
    if directory is None:
        return None
    found: Dict[int, Optional[str]] = {}
    for entry in directory_entries(context, kernel_module_name, directory, headers):
        if entry.type_name != CALLBACK_TYPE:
            vollog.debug(
                f"\\Callback entry {entry.body:#x} ({entry.name}) has type {entry.type_name}: skipped"
            )
            continue
        found[entry.body] = NAME_PREFIX + entry.name if entry.name else None
    return DirectoryRoute(directory=directory, objects=found)


# --- global route ------------------------------------------------------------------------


def from_globals(
    context: interfaces.context.ContextInterface, kernel_module_name: str
) -> Dict[str, int]:
    """``{symbol: object body}`` for each ``nt!ExCb*`` the symbol table has and that holds a
    non-null pointer; missing or unreadable ones are logged and left out."""
    kernel = context.modules[kernel_module_name]
    mask = context.layers[kernel.layer_name].address_mask
    found: Dict[str, int] = {}
    for symbol in GLOBAL_SYMBOLS:
        if not kernel.has_symbol(symbol):
            vollog.debug(f"No nt!{symbol} in this kernel")
            continue
        try:
            value = int(kernel.object("pointer", offset=kernel.get_symbol(symbol).address)) & mask
        except exceptions.InvalidAddressException:
            vollog.debug(f"nt!{symbol} unreadable")
            continue
        if not value:
            vollog.debug(f"nt!{symbol} is null")
            continue
        found[symbol] = value
    return found


def global_pairs(found: Dict[str, int]) -> List[Tuple[str, int]]:
    return sorted(found.items(), key=lambda item: (item[1], item[0]))
