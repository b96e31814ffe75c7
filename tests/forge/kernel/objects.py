"""The object manager's state: object types, directories, object headers and their names.

Every object is one pool allocation laid out as Windows lays it out:
``_POOL_HEADER | optional headers | _OBJECT_HEADER | body``, the optional headers ordered so that
``nt!ObpInfoMaskToOffset[InfoMask & (bit | bit - 1)]`` is the distance from the object header
back to the header of that bit. On Windows 10 the header's ``TypeIndex`` is encoded with
``nt!ObHeaderCookie`` and the second byte of the header's address.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..allocators.pool import PoolBlock, PoolKind, tag_value
from ..memory.physical import masked
from ..profiles.layout import KernelLayout
from .machine import KernelMachine

# Optional object headers by InfoMask bit, closest to the object header first.
INFO_CREATOR = 0x01
INFO_NAME = 0x02
INFO_HANDLE = 0x04
INFO_QUOTA = 0x08
INFO_PROCESS = 0x10
OPTIONAL_HEADER_TYPES = {
    INFO_CREATOR: "_OBJECT_HEADER_CREATOR_INFO",
    INFO_NAME: "_OBJECT_HEADER_NAME_INFO",
    INFO_QUOTA: "_OBJECT_HEADER_QUOTA_INFO",
}
# Sizes of the optional headers the forge never writes, for the offset table only: x64, and x86
# where Windows 7's _OBJECT_HEADER_HANDLE_INFO and _OBJECT_HEADER_PROCESS_INFO are 8 bytes (the
# later 0x20/0x40 headers are taken as pointer-sized pairs as well).
OTHER_OPTIONAL_HEADER_SIZES = {INFO_HANDLE: 0x10, INFO_PROCESS: 0x10, 0x20: 0x10, 0x40: 0x10}
OTHER_OPTIONAL_HEADER_SIZES_X86 = {INFO_HANDLE: 0x8, INFO_PROCESS: 0x8, 0x20: 0x8, 0x40: 0x8}

OBJ_FLAG_KERNEL_OBJECT = 0x02
OBJ_FLAG_PERMANENT = 0x10

DIRECTORY_BUCKETS = 37
TYPE_INDEX_TABLE_UNUSED = 0xBAD0B0B0  # what Windows keeps in ObTypeIndexTable[1]

# Object types in creation order (index = position + 2), as on the respective builds.
TYPES_WINDOWS_10 = (
    "Type", "Directory", "SymbolicLink", "Token", "Job", "Process", "Thread", "Partition",
    "UserApcReserve", "IoCompletionReserve", "ActivityReference", "PsSiloContextPaged",
    "PsSiloContextNonPaged", "DebugObject", "Event", "Mutant", "Callback", "Semaphore", "Timer",
    "IRTimer", "Profile", "KeyedEvent", "WindowStation", "Desktop", "Composition",
    "RawInputManager", "CoreMessaging", "TpWorkerFactory", "Adapter", "Controller", "Device",
    "Driver", "IoCompletion", "WaitCompletionPacket", "File", "TmTm", "TmTx", "TmRm", "TmEn",
    "Section", "Session", "Key", "RegistryTransaction", "ALPC Port", "EnergyTracker",
    "PowerRequest", "WmiGuid", "EtwRegistration", "EtwSessionDemuxEntry", "EtwConsumer",
    "CoverageSampler", "DmaAdapter", "PcwObject", "FilterConnectionPort",
    "FilterCommunicationPort", "NdisCmState",
)
TYPES_WINDOWS_7 = (
    "Type", "Directory", "SymbolicLink", "Token", "Job", "Process", "Thread", "UserApcReserve",
    "IoCompletionReserve", "DebugObject", "Event", "EventPair", "Mutant", "Callback", "Semaphore",
    "Timer", "Profile", "KeyedEvent", "WindowStation", "Desktop", "TpWorkerFactory", "Adapter",
    "Controller", "Device", "Driver", "IoCompletion", "File", "TmTm", "TmTx", "TmRm", "TmEn",
    "Section", "Session", "Key", "ALPC Port", "PowerRequest", "WmiGuid", "EtwRegistration",
    "EtwConsumer", "FilterConnectionPort", "FilterCommunicationPort", "PcwObject",
)
# Pool tags (ObjectType->Key) of the types whose objects the forge allocates.
TYPE_POOL_TAGS = {"Type": b"ObjT", "Directory": b"Dire", "Callback": b"Call", "Driver": b"Driv", "Device": b"Devi",
                  "Process": b"Proc"}
# The pool each type's objects come from (its TypeInfo.PoolType): directories are paged.
TYPE_POOLS = {"Directory": PoolKind.PAGED}
# What the ground truth calls the pool block of an object of each type.
TYPE_ROLES = {"Type": "type_object", "Directory": "directory_object", "Callback": "callback_object",
              "Process": "process_object", "Driver": "driver_object"}


def directory_hash(name: str) -> int:
    """The object directory hash of ObpLookupDirectoryEntry (WRK), before ``% 37``."""
    value = 0
    for char in name:
        code = ord(char)
        value = (value + (value << 1) + (value >> 1)) & 0xFFFF_FFFF
        if code >= ord("a") and code <= ord("z"):
            code -= ord("a") - ord("A")
        elif code > 0x7F:
            code = ord(char.upper()[0])
        value = (value + code) & 0xFFFF_FFFF
    return value


@dataclass
class KernelObject:
    """One forged object: where its pieces are and what its headers say."""

    type_name: str
    header: int
    body: int
    block_header: int
    name: Optional[str] = None
    name_info: Optional[int] = None
    directory: Optional["KernelObject"] = None
    entries: List[int] = field(default_factory=list)  # directory entries that point at it
    blocks: List[PoolBlock] = field(default_factory=list)  # its pool block, then its name's


class ObjectManager:
    """Types, the root directory and named directories below it."""

    def __init__(self, machine: KernelMachine, kernel_base: int, cookie: int = 0x6B) -> None:
        self.machine = machine
        self.layout: KernelLayout = machine.layout
        self.kernel_base = kernel_base
        self.cookie = cookie if self.layout.encodes_type_index else None
        self.body_offset = self.layout.offset_of("_OBJECT_HEADER", "Body")
        names = TYPES_WINDOWS_10 if self.layout.nt_version >= (10, 0) else TYPES_WINDOWS_7
        self.type_indices: Dict[str, int] = {name: index + 2 for index, name in enumerate(names)}
        self.types: Dict[str, KernelObject] = {}
        self._bucket_heads: Dict[int, List[int]] = {}
        self._write_info_mask_table()
        if self.cookie is not None:
            self.machine.space.write(self._global("ObHeaderCookie"), bytes([self.cookie]))
        self._create_types(names)
        self.root = self.create_object("Directory", self.layout.size_of("_OBJECT_DIRECTORY"), name="\\", permanent=True)
        self.machine.write_pointer(self._global("ObpRootDirectoryObject"), self.root.body)
        self.object_types_directory = self.create_directory("ObjectTypes")
        for type_object in self.types.values():
            self.insert(self.object_types_directory, type_object)

    def _global(self, symbol: str) -> int:
        return self.kernel_base + self.layout.symbol(symbol)

    # -- fixed tables --------------------------------------------------------------------

    def optional_header_size(self, bit: int) -> int:
        if bit in OPTIONAL_HEADER_TYPES and self.layout.has_type(OPTIONAL_HEADER_TYPES[bit]):
            return self.layout.size_of(OPTIONAL_HEADER_TYPES[bit])
        sizes = OTHER_OPTIONAL_HEADER_SIZES if self.layout.is_64bit else OTHER_OPTIONAL_HEADER_SIZES_X86
        return sizes[bit]

    def _write_info_mask_table(self) -> None:
        bits = [INFO_CREATOR, INFO_NAME, INFO_HANDLE, INFO_QUOTA, INFO_PROCESS, 0x20, 0x40]
        table = bytes(
            sum(self.optional_header_size(bit) for bit in bits if mask & bit) for mask in range(0x80)
        )
        self.machine.space.write(self._global("ObpInfoMaskToOffset"), table)

    def _create_types(self, names: Sequence[str]) -> None:
        size = self.layout.size_of("_OBJECT_TYPE")
        table = self._global("ObTypeIndexTable")
        self.machine.write_pointer(table, 0)
        self.machine.write_pointer(table + self.layout.pointer_size, TYPE_INDEX_TABLE_UNUSED)
        for name in names:
            type_object = self.create_object("Type", size, name=name, permanent=True)
            self.types[name] = type_object
            body = type_object.body
            _, buffer = self.machine.allocate_string(name, b"ObNm", role="type_name")
            values = {"Index": self.type_indices[name], "TotalNumberOfObjects": 0,
                      "Key": tag_value(TYPE_POOL_TAGS.get(name, name[:4].ljust(4).encode()))}
            values.update(self.machine.unicode_string_values("Name", name, buffer))
            self.machine.write_struct(body, "_OBJECT_TYPE", values)
            type_list = body + self.layout.offset_of("_OBJECT_TYPE", "TypeList")
            self.machine.write_list_entry(type_list, type_list, type_list)
            callbacks = body + self.layout.offset_of("_OBJECT_TYPE", "CallbackList")
            self.machine.write_list_entry(callbacks, callbacks, callbacks)
            self.machine.write_pointer(table + self.type_indices[name] * self.layout.pointer_size, body)
        # The kernel's pointers to its object types (the type globals a reader may use instead
        # of walking ObTypeIndexTable), where the build's table has them.
        for global_name, type_name in (("ExCallbackObjectType", "Callback"), ("IoDriverObjectType", "Driver"),
                                       ("ObpDirectoryObjectType", "Directory"), ("ObpTypeObjectType", "Type")):
            if self.layout.has_symbol(global_name):
                self.machine.write_pointer(self._global(global_name), self.types[type_name].body)

    # -- objects -------------------------------------------------------------------------

    def encoded_type_index(self, header: int, type_name: str) -> int:
        index = self.type_indices[type_name]
        if self.cookie is None:
            return index
        return (index ^ self.cookie ^ ((masked(header) >> 8) & 0xFF)) & 0xFF

    def pool_tag(self, type_name: str) -> bytes:
        tag = bytearray(TYPE_POOL_TAGS[type_name])
        if self.layout.protects_object_pool_tags:
            tag[3] |= 0x80
        return bytes(tag)

    def create_object(
        self,
        type_name: str,
        body_size: int,
        name: Optional[str] = None,
        creator_info: bool = False,
        quota_info: bool = False,
        permanent: bool = False,
        name_length: Optional[int] = None,
    ) -> KernelObject:
        """Allocate an object with its headers; ``name_length`` may lie about the name."""
        mask = (INFO_CREATOR if creator_info else 0) | (INFO_NAME if name is not None else 0) | (INFO_QUOTA if quota_info else 0)
        optional = sum(self.optional_header_size(bit) for bit in OPTIONAL_HEADER_TYPES if mask & bit)
        block = self.machine.pool.allocate(optional + self.body_offset + body_size, self.pool_tag(type_name),
                                           TYPE_POOLS.get(type_name, PoolKind.NONPAGED), role=TYPE_ROLES.get(type_name, "object"))
        header = block.body + optional
        body = header + self.body_offset
        flags = OBJ_FLAG_KERNEL_OBJECT | (OBJ_FLAG_PERMANENT if permanent else 0)
        self.machine.write_struct(header, "_OBJECT_HEADER", {
            "PointerCount": 1 if permanent else 2,
            "HandleCount": 0,
            "TypeIndex": self.encoded_type_index(header, type_name),
            "InfoMask": mask,
            "Flags": flags,
        }, size=self.body_offset)
        obj = KernelObject(type_name, header, body, block.header, name, blocks=[block])
        if mask & INFO_CREATOR:
            creator = header - self.optional_header_size(INFO_CREATOR)
            self.machine.write_struct(creator, "_OBJECT_HEADER_CREATOR_INFO", {"CreatorUniqueProcess": 4})
            type_list = creator + self.layout.offset_of("_OBJECT_HEADER_CREATOR_INFO", "TypeList")
            self.machine.write_list_entry(type_list, type_list, type_list)
        if name is not None:
            offset = sum(self.optional_header_size(bit) for bit in (INFO_CREATOR, INFO_NAME) if mask & bit)
            obj.name_info = header - offset
            name_block, buffer = self.machine.allocate_string(name, b"ObNm", role="object_name")
            obj.blocks.append(name_block)
            self.machine.write_struct(obj.name_info, "_OBJECT_HEADER_NAME_INFO",
                                      self.machine.unicode_string_values("Name", name, buffer, name_length))
        return obj

    def create_directory(self, name: str, parent: Optional[KernelObject] = None) -> KernelObject:
        directory = self.create_object("Directory", self.layout.size_of("_OBJECT_DIRECTORY"), name=name, permanent=True)
        self.insert(parent or self.root, directory)
        return directory

    def insert(self, directory: KernelObject, obj: KernelObject) -> int:
        """Link ``obj`` at the head of its hash bucket in ``directory``; returns the entry."""
        if obj.name is None:
            raise ValueError("only named objects can be inserted into a directory")
        hash_value = directory_hash(obj.name)
        bucket = directory.body + self.layout.offset_of("_OBJECT_DIRECTORY", "HashBuckets") + (hash_value % DIRECTORY_BUCKETS) * self.layout.pointer_size
        block = self.machine.pool.allocate(self.layout.size_of("_OBJECT_DIRECTORY_ENTRY"), b"ObDi", PoolKind.PAGED,
                                           role="directory_entry")
        self.machine.write_struct(block.body, "_OBJECT_DIRECTORY_ENTRY", {
            "ChainLink": self.machine.read_pointer(bucket),
            "Object": obj.body,
            "HashValue": hash_value,
        })
        self.machine.write_pointer(bucket, block.body)
        if obj.name_info is not None:
            self.machine.write_fields(obj.name_info, "_OBJECT_HEADER_NAME_INFO", {"Directory": directory.body})
        obj.directory = directory
        obj.entries.append(block.body)
        return block.body

    def set_type_count(self, type_name: str, count: int) -> None:
        self.machine.write_fields(self.types[type_name].body, "_OBJECT_TYPE", {"TotalNumberOfObjects": count, "HighWaterNumberOfObjects": count})

