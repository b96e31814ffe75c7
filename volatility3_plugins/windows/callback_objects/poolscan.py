"""Pool scanning: callback objects, registration blocks and loader entries that no list shows.

One pass over the kernel half of the kernel's virtual layer, through Volatility's own scanning
machinery (``layer.scan``: mapped pages only, in chunks, with its progress callback), looks
for the pool tags at once:

- ``CBRe``: ``_CALLBACK_REGISTRATION`` blocks (``ExRegisterCallback``);
- ``Call`` (``Cal\\xec`` with the protected bit on Windows 7 and older): object allocations
  ``_POOL_HEADER | optional headers | _OBJECT_HEADER | _CALLBACK_OBJECT``;
- ``MmLd``: the loader's ``_LDR_DATA_TABLE_ENTRY`` blocks, the tag ``windows.modscan`` scans:
  a driver unlinked from ``PsLoadedModuleList`` keeps its entry in pool.

Why not ``PoolScanner.generate_pool_scan``: it builds a ``_POOL_HEADER`` object per hit and,
for objects, tries every header layout through Volatility objects; with tens of thousands of
registrations that is the whole run time. The pool header fields here are unpacked from the
chunk's bytes with the bit positions of the kernel's ``_POOL_HEADER`` type (or Volatility's
poolheader table where the kernel's ISF lacks it), the object header type is decoded as
``_OBJECT_HEADER.get_object_type`` does (``ObTypeIndexTable`` map of ``Handles.get_type_map``
and ``Handles.find_cookie``), and loader entries are read as Volatility objects (they are few).

Every hit is validated before anyone sees it:
- pool header: aligned, ``BlockSize`` covers what the block must hold and fits a page (these
  structures are small-pool allocations), ``PoolType`` 0 = free;
- object: some ``InfoMask`` whose ``ObpInfoMaskToOffset`` total places the ``_OBJECT_HEADER``
  inside the block, header type ``Callback``, body inside the block (the ``Call`` signature
  is then checked like for every route: ``bad_signature``);
- registration: ``CallbackObject`` and ``CallbackFunction`` canonical kernel pointers here,
  ``CallbackObject`` naming a known callback object later (:func:`loose_registrations`);
- loader entry: ``DllBase`` a page-aligned kernel address with ``MZ`` there, a sane
  ``SizeOfImage``.
"""

import dataclasses
import logging
import re
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from volatility3.framework import constants, exceptions, interfaces
from volatility3.plugins.windows import poolscanner

from volatility3.plugins.windows.callback_objects import (
    discovery,
    rawmem,
    registrations,
    structures,
)

vollog = logging.getLogger(__name__)

REGISTRATION_TAG = b"CBRe"
OBJECT_TAGS = (b"Call", b"Cal\xec")  # Windows 7 and older set the protected bit
LOADER_TAG = b"MmLd"

#: Callback objects and registrations are small-pool blocks: never more than a page.
MAX_BLOCK = rawmem.PAGE_SIZE
#: Scan chunk: small, so a scan adds little to peak memory (Volatility's default is 16 MiB).
CHUNK_SIZE = 0x100000
#: Bounds against hostile memory: a real system has hundreds of each, not millions.
MAX_HITS_PER_KIND = 1_000_000
MAX_IMAGE_SIZE = 0x10000000  # 256 MiB: no driver image is larger


@dataclasses.dataclass(frozen=True)
class PoolLayout:
    """Where ``_POOL_HEADER`` keeps its fields, and the block unit."""

    header_size: int
    unit: int  # BlockSize unit and header alignment: 16 on x64, 8 on x86
    tag_offset: int
    block_size: rawmem.BitField
    pool_type: rawmem.BitField


def pool_layout(context: interfaces.context.ContextInterface, kernel_module_name: str) -> PoolLayout:
    kernel = context.modules[kernel_module_name]
    if kernel.has_type("_POOL_HEADER"):
        table = kernel.symbol_table_name
    else:
        table = poolscanner.PoolScanner.get_pool_header_table(context, kernel.symbol_table_name)
    name = table + constants.BANG + "_POOL_HEADER"
    header = context.symbol_space.get_type(name)
    pointer_size = discovery._kernel_pointer_size(context, kernel_module_name)
    return PoolLayout(
        header_size=header.size,
        unit=0x10 if pointer_size == 8 else 8,
        tag_offset=header.relative_child_offset("PoolTag"),
        block_size=rawmem.bit_field(context, name, "BlockSize"),
        pool_type=rawmem.bit_field(context, name, "PoolType"),
    )


@dataclasses.dataclass(frozen=True)
class PoolHit:
    header: int  # address of the _POOL_HEADER
    tag: bytes
    block_size: int  # bytes, header included
    free: bool
    data: bytes  # the block's bytes as far as the scanned chunk holds them


class PoolTagScanner(interfaces.layers.ScannerInterface):
    """Finds pool headers carrying one of ``tags`` in a chunk and checks their size."""

    thread_safe = True
    _version = (1, 0, 0)
    _required_framework_version = (2, 0, 0)

    def __init__(self, layout: PoolLayout, tags: Sequence[bytes], minimum_sizes: Dict[bytes, int]):
        super().__init__()
        self.chunk_size = CHUNK_SIZE
        self.overlap = MAX_BLOCK  # a block starting in this chunk is whole in its data
        self._layout = layout
        self._minimum = minimum_sizes
        self._regex = re.compile(b"|".join(re.escape(tag) for tag in tags))

    def __call__(self, data: bytes, data_offset: int) -> Iterable[PoolHit]:
        layout = self._layout
        for match in self._regex.finditer(data):
            position = match.start() - layout.tag_offset
            # Hits in the overlap belong to the next chunk (ScannerInterface contract).
            if position < 0 or position >= self.chunk_size:
                continue
            address = data_offset + position
            if address % layout.unit:
                continue
            header = data[position : position + layout.header_size]
            if len(header) < layout.header_size:
                continue
            block = layout.block_size.get(header) * layout.unit
            tag = match.group()
            if block < self._minimum[tag] or block > MAX_BLOCK:
                continue
            yield PoolHit(
                header=address,
                tag=tag,
                block_size=block,
                free=layout.pool_type.get(header) == 0,
                data=data[position : position + block],
            )


def kernel_sections(context: interfaces.context.ContextInterface, layer_name: str, pointer_size: int) -> List[Tuple[int, int]]:
    """The kernel half of the address space (pool, images), as the layer addresses it."""
    layer = context.layers[layer_name]
    start = (1 << 47) if pointer_size == 8 else 0x80000000
    start &= layer.address_mask
    end = layer.maximum_address
    return [(start, end - start + 1)] if end > start else []


def without_ranges(sections: List[Tuple[int, int]], holes: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``sections`` (start, length) minus every (start, length) in ``holes``."""
    result: List[Tuple[int, int]] = []
    ordered = sorted((start, start + length) for start, length in holes if length > 0)
    for start, length in sections:
        cursor, end = start, start + length
        for hole_start, hole_end in ordered:
            if hole_end <= cursor or hole_start >= end:
                continue
            if hole_start > cursor:
                result.append((cursor, hole_start - cursor))
            cursor = max(cursor, hole_end)
        if cursor < end:
            result.append((cursor, end - cursor))
    return result


@dataclasses.dataclass
class ScannedModule:
    """A loader entry found in pool."""

    entry: int
    base: int
    size: int
    name: Optional[str]
    free: bool


@dataclasses.dataclass
class ScanResult:
    """What one pass found, validated as far as possible without the lists."""

    objects: List[int] = dataclasses.field(default_factory=list)  # bodies, type Callback
    #: (address, in freed pool) of registration blocks that passed the block checks
    registrations: List[Tuple[int, bool]] = dataclasses.field(default_factory=list)
    modules: List[ScannedModule] = dataclasses.field(default_factory=list)
    rejected: Dict[str, int] = dataclasses.field(default_factory=dict)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


class CallbackPoolScan:
    """One scanning pass and the validation of its hits."""

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: str,
        headers: Optional[discovery.ObjectHeaders],
    ) -> None:
        self._context = context
        self._kernel = context.modules[kernel_module_name]
        self._kernel_module_name = kernel_module_name
        self._table = callback_table_name
        self._headers = headers
        self._layout = pool_layout(context, kernel_module_name)
        self._reader = rawmem.shared_reader(context, self._kernel.layer_name)
        self._mask = self._reader.mask
        self._pointer_size = discovery._kernel_pointer_size(context, kernel_module_name)
        self._registration = registrations.registration_layout(context, callback_table_name)
        self._object_size = context.symbol_space.get_type(
            structures.type_name(callback_table_name, "_CALLBACK_OBJECT")
        ).size
        self._header_offsets: List[int] = []
        if headers is not None and headers.fast:
            table = headers.info_mask_to_offset
            # Every total of optional headers an InfoMask can describe, smallest first.
            self._header_offsets = sorted(set(table))
        elif headers is not None:
            vollog.warning("Object headers not decodable from bytes: callback objects not scanned")

    def minimum_sizes(self) -> Dict[bytes, int]:
        header = self._layout.header_size
        body_offset = self._headers.body_offset if self._headers else 0
        sizes = {REGISTRATION_TAG: header + self._registration.size, LOADER_TAG: header + 0x40}
        for tag in OBJECT_TAGS:
            sizes[tag] = header + body_offset + self._object_size
        return sizes

    def tags(self, objects: bool = True, regs: bool = True, modules: bool = True) -> List[bytes]:
        tags: List[bytes] = []
        if regs:
            tags.append(REGISTRATION_TAG)
        if objects and self._header_offsets:
            tags.extend(OBJECT_TAGS)
        if modules:
            tags.append(LOADER_TAG)
        return tags

    def run(
        self,
        objects: bool = True,
        regs: bool = True,
        modules: bool = True,
        progress_callback: Optional[constants.ProgressCallback] = None,
        images: Iterable[Tuple[int, int]] = (),
    ) -> ScanResult:
        """Scan the kernel half except ``images`` ((base, size) of loaded modules): pool never
        lies inside a loaded image, and on a real system that is tens of megabytes of code."""
        result = ScanResult()
        tags = self.tags(objects, regs, modules)
        if not tags:
            return result
        layer_name = self._kernel.layer_name
        sections = without_ranges(
            kernel_sections(self._context, layer_name, self._pointer_size),
            [(base, size) for base, size in images if 0 < size <= MAX_IMAGE_SIZE],
        )
        scanner = PoolTagScanner(self._layout, tags, self.minimum_sizes())
        counts = {REGISTRATION_TAG: 0, LOADER_TAG: 0, b"Call": 0}
        for hit in self._context.layers[layer_name].scan(
            self._context, scanner, progress_callback, sections
        ):
            kind = b"Call" if hit.tag in OBJECT_TAGS else hit.tag
            counts[kind] += 1
            if counts[kind] > MAX_HITS_PER_KIND:
                if counts[kind] == MAX_HITS_PER_KIND + 1:
                    vollog.warning(f"More than {MAX_HITS_PER_KIND} {kind!r} pool hits: rest ignored")
                continue
            if hit.tag == REGISTRATION_TAG:
                self._registration_hit(hit, result)
            elif hit.tag == LOADER_TAG:
                self._loader_hit(hit, result)
            else:
                self._object_hit(hit, result)
        vollog.info(
            f"Pool scan: {len(result.objects)} callback objects, {len(result.registrations)} "
            f"registration blocks, {len(result.modules)} loader entries"
            + (f"; rejected {result.rejected}" if result.rejected else "")
        )
        return result

    def _block(self, hit: PoolHit, start: int, length: int) -> Optional[bytes]:
        """Bytes ``start`` into the block: from the hit when the chunk held them."""
        if start + length <= len(hit.data):
            return hit.data[start : start + length]
        try:
            return self._reader.read(hit.header + start, length)
        except exceptions.InvalidAddressException:
            return None

    def _registration_hit(self, hit: PoolHit, result: ScanResult) -> None:
        layout = self._registration
        data = self._block(hit, self._layout.header_size, layout.size)
        if data is None:
            result.reject("registration unreadable")
            return
        routine = layout.routine.get(data)
        owner = layout.callback_object.get(data)
        if not rawmem.is_kernel_pointer(routine, layout.pointer_size):
            result.reject("registration routine not a kernel pointer")
            return
        if not rawmem.is_kernel_pointer(owner, layout.pointer_size):
            result.reject("registration CallbackObject not a kernel pointer")
            return
        body = (hit.header + self._layout.header_size) & self._mask
        result.registrations.append((body, hit.free))

    def _object_hit(self, hit: PoolHit, result: ScanResult) -> None:
        if hit.free:
            # A freed object is no evidence of anything, and its registrations' rows are
            # reported through the objects that still exist.
            result.reject("object in freed pool")
            return
        headers = self._headers
        assert headers is not None
        body_offset = headers.body_offset
        pool_header = self._layout.header_size
        table = headers.info_mask_to_offset
        signature = structures.CALLBACK_SIGNATURE.to_bytes(4, "little")
        found: List[Tuple[bool, int, int]] = []
        for optional in self._header_offsets:
            start = pool_header + optional
            if start + body_offset + self._object_size > hit.block_size:
                break
            info = self._block(hit, start, body_offset)
            if info is None:
                continue
            mask = headers.info_mask_at_header(info)
            # The header's own InfoMask must account for exactly the optional headers in
            # front of it (and a mask with bits set never means "no optional header").
            if mask >= len(table) or table[mask] != optional or (optional == 0) != (mask == 0):
                continue
            header = (hit.header + start) & self._mask
            if headers.type_at_header(header, info) != discovery.CALLBACK_TYPE:
                continue
            body = self._block(hit, start + body_offset, 4)
            found.append((body == signature, optional, (header + body_offset) & self._mask))
        if not found:
            result.reject("object header not of type Callback")
            return
        # Bytes inside optional headers can pass for a header by chance: prefer the candidate
        # whose body carries the signature, then the one nearest the block's end (the body
        # ends the allocation, which is why Volatility reads objects top-down on 8+).
        result.objects.append(max(found)[2])

    def _loader_hit(self, hit: PoolHit, result: ScanResult) -> None:
        entry = (hit.header + self._layout.header_size) & self._mask
        try:
            module = self._kernel.object("_LDR_DATA_TABLE_ENTRY", offset=entry, absolute=True)
            raw_base = int(module.DllBase)
            size = int(module.SizeOfImage)
        except (exceptions.InvalidAddressException, exceptions.SymbolError, AttributeError):
            result.reject("loader entry unreadable")
            return
        base = raw_base & self._mask
        if not base or base % rawmem.PAGE_SIZE or not 0 < size <= MAX_IMAGE_SIZE:
            result.reject("loader entry with an implausible image range")
            return
        try:
            if self._reader.read(base, 2) != b"MZ":
                result.reject("loader entry whose image has no MZ header")
                return
        except exceptions.InvalidAddressException:
            result.reject("loader entry whose image is not mapped")
            return
        try:
            name: Optional[str] = module.BaseDllName.get_string() or None
        except (exceptions.InvalidAddressException, AttributeError):
            name = None
        result.modules.append(ScannedModule(entry, base, size, name, hit.free))


def loose_registrations(
    context: interfaces.context.ContextInterface,
    layer_name: str,
    callback_table_name: str,
    candidates: Iterable[Tuple[int, bool]],
    linked: Set[int],
    known_objects: Set[int],
) -> List[Tuple[registrations.Registration, bool]]:
    """Scanned registration blocks on no walked list whose ``CallbackObject`` names a known
    callback object, with whether the block is free; sorted by address. A block on a list is
    reported by its list walk, never twice."""
    found: List[Tuple[registrations.Registration, bool]] = []
    dropped = 0
    for address, free in sorted(set(candidates)):
        if address in linked:
            continue
        reg = registrations.read_registration(context, layer_name, callback_table_name, address)
        owner = reg.callback_object
        if isinstance(owner, int) and owner in known_objects:
            found.append((reg, free))
        else:
            dropped += 1
    if dropped:
        vollog.debug(
            f"{dropped} unlinked registration blocks name no known callback object: not reported"
        )
    return found
