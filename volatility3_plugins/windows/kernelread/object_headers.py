"""Names and types of object bodies, decoded from their ``_OBJECT_HEADER`` as Volatility does.

The arithmetic is that of Volatility's ``_OBJECT_HEADER.get_name()`` and
``get_object_type()``: optional headers are found through ``nt!ObpInfoMaskToOffset``, the name
is the ``_OBJECT_HEADER_NAME_INFO.Name`` string, and on Windows 10 and later the ``TypeIndex``
is XOR-encoded with ``nt!ObHeaderCookie`` and the second byte of the header's address. It runs
on bytes from the page cache: thousands of directory entries and scan hits would otherwise
build several Volatility objects each.

Only the type indices a caller asks about are resolved: from the kernel global that points at
the type when there is one (the caller names it, or :data:`TYPE_GLOBALS` knows it), else from a
bounded walk of ``nt!ObTypeIndexTable``; the full type map is never built otherwise.
"""

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Optional, Tuple, Union

from volatility3.framework import exceptions, renderers

from .views import Absent, StructView, ViewError, member_offset

if TYPE_CHECKING:
    from .context import KernelContext

NAME_INFO_BIT = 0x02
#: Reference counts above this are not an object's (Volatility's OBJECT_HEADER.is_valid).
MAX_REFERENCES = 0x1000000
#: ObTypeIndexTable has at most 256 entries (the TypeIndex is one byte).
MAX_TYPES = 256
#: Kernel globals that point at the _OBJECT_TYPE of the object manager's own types, by type name.
TYPE_GLOBALS = {"Directory": "ObpDirectoryObjectType", "Type": "ObpTypeObjectType"}

Name = Union[str, None, Absent]


class ObjectHeadersUnusable(Exception):
    """This kernel's object headers cannot be decoded (symbols or tables missing)."""


@dataclasses.dataclass(frozen=True)
class HeaderInfo:
    """What an object's header says.

    ``readable``: the ``_OBJECT_HEADER`` was read and is not all zeros (only then are its
    type and name evidence). ``name``: the name (str), None when the header says the object
    has none, UnreadableValue when it has one that cannot be read.
    """

    body: int
    readable: bool
    type_index: Optional[int]
    name: Name


class ObjectHeaders:
    """Decodes object headers for one run (built by ``KernelContext.object_headers``)."""

    def __init__(self, kernel: "KernelContext") -> None:
        self._kernel = kernel
        header = kernel.kernel_view("_OBJECT_HEADER", ["InfoMask", "TypeIndex"])
        name_info = kernel.kernel_view(
            "_OBJECT_HEADER_NAME_INFO", ["Name.Length", "Name.MaximumLength", "Name.Buffer"]
        )
        object_type = kernel.kernel_view(
            "_OBJECT_TYPE", ["Index", "Name.Length", "Name.MaximumLength", "Name.Buffer"]
        )
        if header is None or name_info is None or object_type is None:
            raise ObjectHeadersUnusable("the kernel's symbol table lacks object-header types")
        self._header: StructView = header
        self._name_info: StructView = name_info
        self._object_type: StructView = object_type
        try:
            self.body_offset: int = member_offset(kernel.context, kernel.kernel_type("_OBJECT_HEADER"), "Body")
        except ViewError as excp:
            raise ObjectHeadersUnusable(f"_OBJECT_HEADER.Body: {excp}") from excp
        self._indices: Dict[str, Optional[int]] = {}
        table = kernel.symbols.address("ObpInfoMaskToOffset")
        if table is None:
            raise ObjectHeadersUnusable("no nt!ObpInfoMaskToOffset")
        self.info_mask_to_offset = self._read_offset_table(table)
        cookie_address = kernel.symbols.address("ObHeaderCookie")
        self.cookie: Optional[int] = None
        if cookie_address is not None:
            try:
                self.cookie = kernel.reader.u8(cookie_address)
            except exceptions.InvalidAddressException as excp:
                raise ObjectHeadersUnusable(f"nt!ObHeaderCookie unreadable at {cookie_address:#x}") from excp

    def _read_offset_table(self, address: int) -> bytes:
        """``nt!ObpInfoMaskToOffset``: distance from the object header back to each optional
        header, indexed by ``InfoMask & (bit | bit - 1)``. 256 entries on current builds, 128
        where the bytes beyond are not mapped."""
        for length in (0x100, 0x80):
            try:
                data = self._kernel.reader.read(address, length)
            except exceptions.InvalidAddressException:
                continue
            if any(data):
                return data
            raise ObjectHeadersUnusable(f"nt!ObpInfoMaskToOffset at {address:#x} reads as zeros")
        raise ObjectHeadersUnusable(f"nt!ObpInfoMaskToOffset unreadable at {address:#x}")

    # -- type indices --------------------------------------------------------------------

    def type_index(self, type_name: str, type_global: Optional[str] = None) -> Optional[int]:
        """The (decoded) index of the object type named ``type_name``, None when unknown:
        through the kernel global that points at the type when there is one (one read;
        ``type_global``, else the one :data:`TYPE_GLOBALS` knows), else through
        ``ObTypeIndexTable``."""
        if type_name not in self._indices:
            index: Optional[int] = None
            symbol = type_global or TYPE_GLOBALS.get(type_name)
            pointer = self._kernel.read_global_pointer(symbol) if symbol else None
            if pointer:
                found = self.read_type(pointer)
                if found is not None and found[1] == type_name:
                    index = found[0]
            if index is None:
                index = self._type_table.get(type_name)
            self._indices[type_name] = index
        return self._indices[type_name]

    def read_type(self, address: int) -> Optional[Tuple[int, str]]:
        """(Index, Name) of the ``_OBJECT_TYPE`` at ``address``; None when unreadable."""
        record = self._object_type.read(self._kernel.reader, address)
        if not record.complete or record.zeroed:
            return None
        name = self._kernel.record_unicode(record, "Name")
        return (record.Index, name) if name is not None else None

    def type_name(self, index: int) -> Optional[str]:
        """The name of the object type of (decoded) index ``index``, from ``nt!ObTypeIndexTable``."""
        found = self._types_by_index.get(index)
        return found[0] if found is not None else None

    def type_key(self, index: int) -> Optional[int]:
        """The pool tag objects of type ``index`` are allocated with (``_OBJECT_TYPE.Key``, as
        ``ObCreateObject`` tags them); None when unknown."""
        found = self._types_by_index.get(index)
        return found[1] if found is not None else None

    @functools.cached_property
    def _types_by_index(self) -> Dict[int, Tuple[str, Optional[int]]]:
        """Index -> (name, Key) of every type in ``nt!ObTypeIndexTable`` (bounded)."""
        key_view = self._kernel.kernel_view("_OBJECT_TYPE", ["Key"], quiet=True)
        table = self._kernel.symbols.address("ObTypeIndexTable")
        found: Dict[int, Tuple[str, Optional[int]]] = {}
        for name, index in self._type_table.items():
            key = None
            if key_view is not None and table is not None:
                try:
                    record = key_view.read(self._kernel.reader, self._kernel.read_pointer(table + index * self._kernel.pointer_size))
                    key = record.Key if record.readable("Key") else None
                except exceptions.InvalidAddressException:
                    key = None
            found[index] = (name, key)
        return found

    @functools.cached_property
    def _type_table(self) -> Dict[str, int]:
        """The full map from ``nt!ObTypeIndexTable`` (bounded): only when a global is missing."""
        table = self._kernel.symbols.address("ObTypeIndexTable")
        found: Dict[str, int] = {}
        if table is None:
            return found
        for index in range(2, MAX_TYPES):
            try:
                pointer = self._kernel.read_pointer(table + index * self._kernel.pointer_size)
            except exceptions.InvalidAddressException:
                break
            if not pointer:
                break
            entry = self.read_type(pointer)
            if entry is not None:
                found.setdefault(entry[1], index)
        return found

    # -- headers -------------------------------------------------------------------------

    def header_address(self, body: int) -> int:
        return (body - self.body_offset) & self._kernel.mask

    def decode_type_index(self, header: int, raw_index: int) -> int:
        """As ``_OBJECT_HEADER.get_object_type``: the second byte of the header address and the
        cookie on Windows 10 and later, the stored value before."""
        if self.cookie is None:
            return raw_index
        return ((header >> 8) ^ self.cookie ^ raw_index) & 0xFF

    def info(self, body: int) -> HeaderInfo:
        """Type and name of the object whose body is at ``body``."""
        header = self.header_address(body)
        record = self._header.read(self._kernel.reader, header)
        if not record.complete or record.zeroed:
            return HeaderInfo(body, False, None, renderers.UnreadableValue())
        return HeaderInfo(
            body,
            True,
            self.decode_type_index(header, record.TypeIndex),
            self._name(header, record.InfoMask),
        )

    def headers_in_block(
        self, block: int, read: Callable[[int, int], Optional[bytes]], start: int, block_size: int, minimum_body: int = 0
    ) -> Iterator[Tuple[int, int]]:
        """Where an object allocation's ``_OBJECT_HEADER`` can be, in a pool block at ``block``
        whose optional headers begin ``start`` bytes in (after its pool header): (offset of the
        header in the block, decoded type index) for every total of optional headers an
        ``InfoMask`` can describe, smallest first, whose header's own ``InfoMask`` accounts for
        exactly the optional headers in front of it (a mask with bits set never means none),
        with ``minimum_body`` bytes of body in the block. ``read(offset, length)`` gives the
        block's bytes (None when unreadable)."""
        table = self.info_mask_to_offset
        for optional in sorted(set(table)):
            offset = start + optional
            if offset + self.body_offset + minimum_body > block_size:
                break
            info = read(offset, self.body_offset)
            if info is None:
                continue
            mask = self.info_mask(info)
            if mask >= len(table) or table[mask] != optional or (optional == 0) != (mask == 0):
                continue
            header = (block + offset) & self._kernel.mask
            yield offset, self.decode_type_index(header, self.raw_type_index(info))

    def counts_plausible(self, header: int) -> bool:
        """The ``_OBJECT_HEADER`` at ``header`` has reference counts a live or freed object can
        have: between 0 and 0x1000000, Volatility's bound (``OBJECT_HEADER.is_valid``), for
        ``PointerCount`` and ``HandleCount`` alike; False when unreadable."""
        view = self._kernel.kernel_view("_OBJECT_HEADER", ["PointerCount", "HandleCount"], quiet=True)
        if view is None:
            return True  # nothing to check against
        record = view.read(self._kernel.reader, header)
        if not record.complete:
            return False
        return all(0 <= self._signed(record[name], view.fields[name].size) <= MAX_REFERENCES
                   for name in ("PointerCount", "HandleCount"))

    @staticmethod
    def _signed(value: int, size: int) -> int:
        return value - (1 << (8 * size)) if value >> (8 * size - 1) else value

    def info_mask(self, data: bytes, base: int = 0) -> int:
        return self._header.fields["InfoMask"].unpack(data, base)

    def raw_type_index(self, data: bytes, base: int = 0) -> int:
        """The stored (still encoded) ``TypeIndex`` of a header read as bytes."""
        return self._header.fields["TypeIndex"].unpack(data, base)

    def _name(self, header: int, info_mask: int) -> Name:
        if not info_mask & NAME_INFO_BIT:
            return None
        offset = self.info_mask_to_offset[info_mask & (NAME_INFO_BIT | (NAME_INFO_BIT - 1))]
        if offset == 0:
            return renderers.UnreadableValue()
        record = self._name_info.read(self._kernel.reader, header - offset)
        if not record.complete:
            return renderers.UnreadableValue()
        text = self._kernel.record_unicode(record, "Name")
        return renderers.UnreadableValue() if text is None else text
