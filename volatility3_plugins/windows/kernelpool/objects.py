"""Executive objects in pool: the scan target for blocks holding an object of one type.

An object's allocation is ``_POOL_HEADER | optional headers | _OBJECT_HEADER | body`` (WRK
``base/ntos/ob/obcreate.c``). The optional headers in front are the ones ``InfoMask`` says, their
total given by ``nt!ObpInfoMaskToOffset``; the header's type index (XOR-decoded with
``nt!ObHeaderCookie`` on Windows 10 and later) must name the object type, as Volatility's
``get_object_type()`` decodes it. Bytes inside optional headers can pass for a header by chance:
the candidate whose body starts with the type's signature wins, then the one nearest the block's
end (the body ends the allocation, which is why Volatility reads objects top-down on 8 and
later). A freed object is no evidence of anything: such hits are rejected.

:data:`DRIVER_OBJECTS` is the ``Driver`` type as ``windows.driverscan`` scans for it (tag ``Driv``,
``Dri\\xf6`` with the protected bit before Windows 8: only the build's own is searched).
"""

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from ..kernelread import driver_objects
from ..kernelread.views import ViewError, type_size
from .scan import PoolHit, PoolScanner, Rejected, ScanTarget
from .state import BlockState

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext


@dataclasses.dataclass(frozen=True)
class ObjectKind:
    """An object type a scan can look for."""

    kind: str  # the scan target's kind
    tags: Tuple[bytes, ...]
    type_name: str  # the _OBJECT_TYPE's name
    #: The kernel global pointing at the _OBJECT_TYPE (else ObTypeIndexTable is searched)
    type_global: Optional[str]
    #: The body's structure in the kernel's symbol table (None: the caller gives its size), and
    #: the structures always allocated right behind it, in the same block
    body_type: Optional[str] = None
    trailing: Tuple[str, ...] = ()
    #: The bytes a body of this type starts with, when it has such bytes
    signature: Optional[bytes] = None
    #: The build from which the tag lost its protected bit: ``tags`` are (the tag, the protected
    #: tag), only the one of the kernel's build is searched (both when its build is unknown).
    unprotected_from: Optional[int] = None

    def tags_for(self, build: Optional[int]) -> Tuple[bytes, ...]:
        if self.unprotected_from is None or build is None:
            return self.tags
        return self.tags[:1] if build >= self.unprotected_from else self.tags[1:]


#: Windows 8 (build 9200) stopped setting the protected bit (:data:`.headers.PROTECTED_BIT`) in
#: object pool tags.
UNPROTECTED_TAGS_BUILD = 9200
#: ``Driver`` objects: ``_DRIVER_OBJECT`` starts with ``Type`` (``IO_TYPE_DRIVER``, 4, a CSHORT); its
#: ``_DRIVER_EXTENSION`` is allocated with it, right behind (``IopLoadDriver``, ``IoCreateDriver``:
#: ``ObCreateObject(..., sizeof(DRIVER_OBJECT) + sizeof(DRIVER_EXTENSION), ...)``).
DRIVER_OBJECTS = ObjectKind(driver_objects.ROUTE_NAME, (b"Driv", b"Dri\xf6"), driver_objects.TYPE_NAME,
                            driver_objects.TYPE_GLOBAL, "_DRIVER_OBJECT", ("_DRIVER_EXTENSION",),
                            (4).to_bytes(2, "little"), UNPROTECTED_TAGS_BUILD)


def body_size(kernel: "KernelContext", kind: ObjectKind) -> Optional[int]:
    """The bytes the body and what trails it take, from the kernel's symbol table; None when it
    lacks a type."""
    if kind.body_type is None:
        return None
    try:
        return sum(type_size(kernel.context, kernel.kernel_type(name)) for name in (kind.body_type,) + kind.trailing)
    except ViewError:
        return None


def object_target(
    kernel: "KernelContext",
    kind: ObjectKind,
    keep: Callable[[int, BlockState], Any],
    size: Optional[Callable[[], Optional[int]]] = None,
) -> ScanTarget:
    """The scan target of ``kind``: each block is screened by :func:`find_body`, a freed one is
    rejected, and the body found is handed to ``keep(body, state)``, whose result the scan keeps
    (it may raise :class:`Rejected`); ``size`` gives the body's size where ``kind`` names no
    structure."""
    measure = size or (lambda: body_size(kernel, kind))
    measured: List[Optional[int]] = []  # the body's size, looked up once (a type lookup builds templates)

    def body() -> Optional[int]:
        if not measured:
            measured.append(measure())
        return measured[0]

    def needed() -> Optional[int]:
        headers, found = kernel.object_headers, body()
        return None if headers is None or found is None else headers.body_offset + found

    # The body the screen found for the hit it looked at last: the scan validates each hit
    # right after screening it, and decoding the object headers once is enough.
    screened: Dict[int, int] = {}

    def validate(scanner: PoolScanner, hit: PoolHit, state: BlockState) -> Any:
        if state == BlockState.FREED:
            raise Rejected("object in freed pool")
        found = screened.get(hit.header)
        return keep(found if found is not None else find_body(kernel, scanner, hit, kind, body()), state)

    def screen(scanner: PoolScanner, hit: PoolHit) -> None:
        screened.clear()
        screened[hit.header] = find_body(kernel, scanner, hit, kind, body())

    return ScanTarget(kind.kind, kind.tags_for(kernel.build_number), needed, validate, screen)


def find_body(kernel: "KernelContext", scanner: PoolScanner, hit: PoolHit, kind: ObjectKind, size: Optional[int]) -> int:
    """The body address of the object of ``kind`` in the block of ``hit``, whatever the block's
    state; raises Rejected. Where its header can lie is
    :meth:`~..kernelread.object_headers.ObjectHeaders.headers_in_block`'s answer, the placement
    ``windows.poolmap`` reads objects with too."""
    headers = kernel.object_headers
    if headers is None or size is None:
        raise Rejected("object headers unusable")
    wanted = headers.type_index(kind.type_name, kind.type_global)
    body_offset = headers.body_offset
    found: List[Tuple[bool, int, int]] = []
    candidates = headers.headers_in_block(
        hit.header, lambda offset, length: scanner.block(hit, offset, length), scanner.header.size, hit.block_size, size
    )
    for start, type_index in candidates:
        if wanted is None or type_index != wanted:
            continue
        signed = kind.signature is not None and scanner.block(hit, start + body_offset, len(kind.signature)) == kind.signature
        found.append((signed, start, (hit.header + start + body_offset) & kernel.mask))
    if not found:
        raise Rejected(f"object header not of type {kind.type_name}")
    return max(found)[2]
