"""MemProcFS's offline symbol database (``info.db``), extended with a kernel it lacks.

MemProcFS on Linux has no PDB reader (its wheel ships no ``libpdbcrust.so``): it takes kernel
symbol offsets, type sizes and member offsets from ``info.db``, an SQLite file beside its
``vmm.so`` (``vmm/util.c`` ``Util_GetPathLib``), keyed by the in-memory kernel's CodeView GUID
and age (``vmm/infodb.c`` ``InfoDB_GetPdbId``). The stock file knows five of the eight real
kernels at ``../shared/isf`` and none of the forge's built-in profiles (synthetic GUIDs), so the
MemProcFS tests write the rows of those kernels, from the ISF the image was forged with, into a
copy of the file.

The keys, as ``vmm/infodb.c`` computes them (MemProcFS 5.17.5):

- a name hash (``vmm/charutil.c`` ``CharUtil_Hash32U``, case kept): for each byte ``c`` (a
  signed ``CHAR``), ``h = ror32(h, 13) + c``;
- ``symbol_offset`` (``InfoDB_SymbolOffset``) and ``type_size`` (``InfoDB_TypeSize_Dynamic``):
  ``hash(name) + (pdb_id << 32)``;
- ``type_child`` (``InfoDB_TypeChildOffset_Dynamic``): ``((hash(member) << 32) + hash(type) +
  pdb_id + (pdb_id << 32))`` truncated to 63 bits;
- ``pdb.guidage``: the GUID as 32 upper-case hex digits, then the age in hex.

Two names of one kernel can share a key (a 32-bit hash): the first row stays, and
:func:`extend_with_isf` reports the names it could not store.
"""

import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

MASK32 = 0xFFFF_FFFF
MASK63 = 0x7FFF_FFFF_FFFF_FFFF
KERNEL_MODULE = "nt"


def name_hash(name: str) -> int:
    """``CharUtil_Hash32U(name, FALSE)``: rotate right by 13, add the byte (signed)."""
    value = 0
    for byte in name.encode("utf-8"):
        signed = byte - 0x100 if byte & 0x80 else byte
        value = ((((value >> 13) | (value << 19)) & MASK32) + signed) & MASK32
    return value


def symbol_key(pdb_id: int, name: str) -> int:
    return name_hash(name) + (pdb_id << 32)


def type_size_key(pdb_id: int, type_name: str) -> int:
    return name_hash(type_name) + (pdb_id << 32)


def member_key(pdb_id: int, type_name: str, member: str) -> int:
    return ((name_hash(member) << 32) + name_hash(type_name) + pdb_id + (pdb_id << 32)) & MASK63


def guid_age(guid: str, age: int) -> str:
    return f"{guid.upper()}{age:X}"


def _isf_pdb(isf: Dict[str, Any]) -> Tuple[str, int, str]:
    pdb = isf["metadata"]["windows"]["pdb"]
    return pdb["GUID"], int(pdb["age"]), pdb.get("database", "ntkrnlmp.pdb")


def _rows(isf: Dict[str, Any], pdb_id: int) -> Iterator[Tuple[str, int, int, str]]:
    """(table, key, value, label) of every symbol, type size and direct member of ``isf``."""
    for name, symbol in isf["symbols"].items():
        if "address" in symbol:
            yield "symbol_offset", symbol_key(pdb_id, name), symbol["address"], f"symbol {name}"
    for type_name, body in isf["user_types"].items():
        yield "type_size", type_size_key(pdb_id, type_name), body["size"], f"size {type_name}"
        for member, spec in body.get("fields", {}).items():
            yield "type_child", member_key(pdb_id, type_name, member), spec["offset"], f"member {type_name}.{member}"


class InfoDB:
    """One ``info.db`` file."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:  # never write to (or leave a journal beside) the installed file
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            self._db = sqlite3.connect(str(self.path))

    def close(self) -> None:
        self._db.close()

    def pdb_id(self, guid: str, age: int) -> Optional[int]:
        row = self._db.execute("SELECT id FROM pdb WHERE guidage = ?", (guid_age(guid, age),)).fetchone()
        return None if row is None else int(row[0])

    def _value(self, table: str, key: int) -> Optional[int]:
        row = self._db.execute(f"SELECT data FROM {table} WHERE hash = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def symbol(self, pdb_id: int, name: str) -> Optional[int]:
        return self._value("symbol_offset", symbol_key(pdb_id, name))

    def type_size(self, pdb_id: int, type_name: str) -> Optional[int]:
        return self._value("type_size", type_size_key(pdb_id, type_name))

    def member(self, pdb_id: int, type_name: str, member: str) -> Optional[int]:
        return self._value("type_child", member_key(pdb_id, type_name, member))

    def extend_with_isf(self, isf: Dict[str, Any]) -> List[str]:
        """Add the kernel of ``isf`` (every symbol, type size and direct member offset) unless
        the file knows its GUID and age already; returns the names a key collision kept out."""
        guid, age, database = _isf_pdb(isf)
        if self.pdb_id(guid, age) is not None:
            return []
        cursor = self._db.execute("INSERT INTO pdb (name, guidage, pdbname) VALUES (?, ?, ?)",
                                  (KERNEL_MODULE, guid_age(guid, age), database))
        pdb_id = int(cursor.lastrowid)
        collisions = []
        for table, key, value, label in _rows(isf, pdb_id):
            if self._db.execute(f"INSERT OR IGNORE INTO {table} (hash, data) VALUES (?, ?)", (key, value)).rowcount == 0:
                collisions.append(label)
        self._db.commit()
        return collisions

    def disagreements(self, isf: Dict[str, Any], symbols: Iterable[str], sizes: Iterable[str],
                      members: Dict[str, List[str]]) -> List[str]:
        """The named symbols, type sizes and members whose lookup, keyed as MemProcFS keys it,
        does not give the value of ``isf`` (an unknown kernel disagrees on everything)."""
        guid, age, _ = _isf_pdb(isf)
        pdb_id = self.pdb_id(guid, age)
        if pdb_id is None:
            return [f"kernel {guid_age(guid, age)} unknown"]
        types = isf["user_types"]
        wrong = [f"symbol {name}" for name in symbols
                 if self.symbol(pdb_id, name) != isf["symbols"].get(name, {}).get("address")]
        wrong += [f"size {name}" for name in sizes if self.type_size(pdb_id, name) != types.get(name, {}).get("size")]
        for type_name, names in members.items():
            fields = types.get(type_name, {}).get("fields", {})
            wrong += [f"member {type_name}.{name}" for name in names
                      if self.member(pdb_id, type_name, name) != fields.get(name, {}).get("offset")]
        return wrong
