"""Structure views compiled once from an ISF: read a structure at an address, get its fields.

A :class:`StructView` is the one reader of one structure for a whole run (the idea of
dissect.cstruct's compiled layouts, on Volatility's symbol tables): the offsets, widths,
bit positions and kinds of the members a caller names are looked up once in the ISF (ours or
the kernel's); reading is then a page-cache read and integer unpacking, with no Volatility
object per field. Nothing is hard-coded: every number comes from the symbol table.

Hostile memory: when the whole structure cannot be read, each field is read on its own, and a
field that cannot be read is :class:`UnreadableValue` in the :class:`Record`, so one missing
page never hides the fields that are there. ``Record.zeroed`` tells a structure whose bytes
all read as zero (a page the acquisition could not read, or freed memory) from one with
content: such memory is no evidence of anything.
"""

import dataclasses
from typing import Dict, Iterable, Sequence, Tuple, Union

from volatility3.framework import constants, exceptions, interfaces, objects, renderers

from .pages import PageReader

Absent = interfaces.renderers.BaseAbsentValue
Value = Union[int, bool, Absent]

#: Field kinds: a plain integer, a pointer (masked to the layer's width as Volatility renders
#: kernel pointers), a one-byte BOOLEAN (any non-zero byte is TRUE, as the kernel tests it), a
#: bit field.
INTEGER, POINTER, BOOLEAN, BITS = "integer", "pointer", "boolean", "bits"


class ViewError(Exception):
    """A structure or member the view needs is not in the symbol table."""


def is_absent(value: object) -> bool:
    return isinstance(value, Absent)


@dataclasses.dataclass(frozen=True)
class Field:
    """One scalar member: where it is and how to decode it."""

    name: str
    offset: int
    size: int
    kind: str = INTEGER
    signed: bool = False
    start_bit: int = 0
    bit_length: int = 0

    def unpack(self, data: bytes, base: int = 0, mask: int = -1) -> Value:
        """The member's value from ``data``, where the structure starts at ``data[base]``."""
        start = base + self.offset
        raw = int.from_bytes(data[start : start + self.size], "little", signed=self.signed)
        if self.kind == POINTER:
            return raw & mask
        if self.kind == BOOLEAN:
            return raw != 0
        if self.kind == BITS:
            return (raw >> self.start_bit) & ((1 << self.bit_length) - 1)
        return raw


class Record:
    """The fields of one structure read at ``address``: ``record.Name`` or ``record["Name"]``.

    ``complete``: the whole structure was readable. ``zeroed``: every byte that could be read
    is zero (also True when nothing could be read): no evidence can be drawn from it.
    """

    __slots__ = ("address", "values", "complete", "zeroed")

    def __init__(self, address: int, values: Dict[str, Value], complete: bool, zeroed: bool) -> None:
        self.address = address
        self.values = values
        self.complete = complete
        self.zeroed = zeroed

    def __getattr__(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def readable(self, name: str) -> bool:
        return not is_absent(self.values[name])

    def __repr__(self) -> str:
        return f"Record({self.address:#x}, {self.values}, complete={self.complete}, zeroed={self.zeroed})"


class StructView:
    """The compiled layout of one structure (or of the members of it a caller needs)."""

    def __init__(self, type_name: str, size: int, fields: Iterable[Field], mask: int) -> None:
        self.type_name = type_name
        self.size = size
        self.fields: Dict[str, Field] = {field.name: field for field in fields}
        self.mask = mask

    @classmethod
    def compile(
        cls,
        context: interfaces.context.ContextInterface,
        type_name: str,
        members: Sequence[str],
        mask: int,
        booleans: Sequence[str] = (),
        optional: Sequence[str] = (),
    ) -> "StructView":
        """Compile ``members`` (dotted paths into embedded structures, e.g. ``Name.Length``) of
        ``type_name`` (``table!_STRUCT``). Members listed in ``optional`` may be missing from the
        table (a member that appeared with a later build); the others raise :class:`ViewError`."""
        template = _table_type(context, type_name)
        fields = []
        for member in members:
            try:
                offset, child = _resolve(context, template, member)
            except ViewError:
                if member in optional:
                    continue
                raise
            fields.append(_field(member, offset, child, member in booleans))
        return cls(type_name, template.size, fields, mask)

    def has(self, name: str) -> bool:
        return name in self.fields

    def offset(self, name: str) -> int:
        return self.fields[name].offset

    def unpack(self, data: bytes, address: int, base: int = 0) -> Record:
        """A record from bytes already read (``data[base]`` is the structure's first byte)."""
        mask = self.mask
        values = {name: field.unpack(data, base, mask) for name, field in self.fields.items()}
        zeroed = not any(data[base : base + self.size])
        return Record(address, values, True, zeroed)

    def read(self, reader: PageReader, address: int) -> Record:
        """Read the structure at ``address``; never raises for missing memory."""
        address &= reader.mask
        try:
            data = reader.read(address, self.size)
        except exceptions.InvalidAddressException:
            return self._read_fields(reader, address)
        return self.unpack(data, address)

    def _read_fields(self, reader: PageReader, address: int) -> Record:
        values: Dict[str, Value] = {}
        zeroed = True
        for name, field in self.fields.items():
            try:
                data = reader.read(address + field.offset, field.size)
            except exceptions.InvalidAddressException:
                values[name] = renderers.UnreadableValue()
                continue
            zeroed = zeroed and not any(data)
            values[name] = field.unpack(data, -field.offset, self.mask)
        return Record(address, values, False, zeroed)


def _resolve(
    context: interfaces.context.ContextInterface,
    template: interfaces.objects.Template,
    path: str,
) -> Tuple[int, interfaces.objects.Template]:
    """Offset and template of a dotted member path, following embedded structures."""
    offset = 0
    current = template
    for part in path.split("."):
        current = _dereference(context, current)
        members = current.vol.get("members")
        if not members or part not in members:
            raise ViewError(f"{template.vol.type_name} has no member {path}")
        relative, current = members[part]
        offset += relative
    return offset, _dereference(context, current)


def _dereference(
    context: interfaces.context.ContextInterface, template: interfaces.objects.Template
) -> interfaces.objects.Template:
    """The real template behind an ISF reference to a named structure."""
    if isinstance(template, objects.templates.ReferenceTemplate):
        return _table_type(context, template.vol.type_name)
    return template


def _field(
    name: str, offset: int, template: interfaces.objects.Template, boolean: bool
) -> Field:
    object_class = template.vol.get("object_class")
    if object_class is not None and issubclass(object_class, objects.BitField):
        base = template.vol.base_type
        return Field(
            name,
            offset,
            base.size,
            BITS,
            start_bit=template.vol.start_bit,
            bit_length=template.vol.end_bit - template.vol.start_bit,
        )
    if object_class is not None and issubclass(object_class, objects.Pointer):
        return Field(name, offset, template.size, POINTER)
    if object_class is not None and issubclass(object_class, objects.Enumeration):
        template = template.vol.base_type
    data_format = template.vol.get("data_format")
    if data_format is None:
        raise ViewError(f"member {name} is not a scalar ({template.vol.type_name})")
    return Field(name, offset, data_format.length, BOOLEAN if boolean else INTEGER, data_format.signed)


def member_offset(context: interfaces.context.ContextInterface, type_name: str, path: str) -> int:
    """Offset of any member (scalar or not, dotted path) of ``type_name``; ViewError if absent."""
    return _resolve(context, _table_type(context, type_name), path)[0]


def type_size(context: interfaces.context.ContextInterface, type_name: str) -> int:
    return _table_type(context, type_name).size


def array_member(context: interfaces.context.ContextInterface, type_name: str, path: str) -> Tuple[int, int, int]:
    """(offset, element count, element size) of an array member of ``type_name``."""
    offset, template = _resolve(context, _table_type(context, type_name), path)
    count = template.vol.get("count")
    subtype = template.vol.get("subtype")
    if count is None or subtype is None:
        raise ViewError(f"{type_name}.{path} is not an array")
    return offset, count, _dereference(context, subtype).size


def _table_type(context: interfaces.context.ContextInterface, type_name: str) -> interfaces.objects.Template:
    """The template of ``table!name`` from its own table, its members' references unresolved.

    Why not ``symbol_space.get_type``: it resolves every type reachable from the one asked for,
    which on a kernel's table (tens of thousands of types) costs most of a second for a single
    ``_OBJECT_HEADER``; a view needs only the types on its members' paths, resolved one by one.
    """
    table_name, _, name = type_name.rpartition(constants.BANG)
    try:
        table = context.symbol_space[table_name] if table_name else None
        return table.get_type(name) if table is not None else context.symbol_space.get_type(type_name)
    except (exceptions.SymbolError, exceptions.SymbolSpaceError, KeyError) as excp:
        raise ViewError(f"no type {type_name}: {excp}") from excp


def type_name(table_name: str, name: str) -> str:
    return table_name + constants.BANG + name
