"""The columns of ``windows.callbackobjects``, in order, each with the kind of its values.

Users script against the names and the order: never rename or reorder one; a new column is
appended after the last. The plugin maps each
kind to the TreeGrid type Volatility renders (``hex`` to ``format_hints.Hex``, ...); the
known-good comparison and the stack read JSON outputs back by these names.
"""

import dataclasses
from typing import Tuple

#: Kinds of values: a number shown in hex (addresses, contexts), text, a boolean, a number.
HEX, TEXT, BOOL, INT = "hex", "str", "bool", "int"


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: str
    #: A JSON output must have it to be read back (known-good comparison, stack): one made with
    #: ``--hide-columns`` hiding it is refused.
    read_back: bool = False


OBJECT = Column("Object", HEX, read_back=True)
NAME = Column("Name", TEXT, read_back=True)
ALLOW_MULTIPLE = Column("AllowMultiple", BOOL)
FOUND_BY = Column("FoundBy", TEXT)
REGISTRATION = Column("Registration", HEX, read_back=True)
ROUTINE = Column("Routine", HEX)
CONTEXT = Column("Context", HEX)
BUSY = Column("Busy", INT)
UNREGISTER_WAITING = Column("UnregisterWaiting", BOOL)
MODULE = Column("Module", TEXT, read_back=True)
SYMBOL = Column("Symbol", TEXT, read_back=True)
FLAGS = Column("Flags", TEXT, read_back=True)
#: Where control really lands when the routine hands it on (an argument gadget: the context, or
#: the pointer read through it; a stub: its fixed target); absent when it does not.
LANDING = Column("Landing", HEX)
#: Who owns the landing: ``module!symbol``, ``module+0xOFF``, ``pool TAG STATE``,
#: ``argument N (per notification)`` or ``none``; absent without a landing.
LANDING_OWNER = Column("LandingOwner", TEXT)
#: ``complete`` or ``degraded``, the same on every row of a run: whether the image held all the
#: evidence the verdict rests on (the verdict line says what is missing). Outputs made before it
#: existed lack it: not needed to read one back.
EVIDENCE = Column("Evidence", TEXT)
#: The values of ``Evidence``.
COMPLETE, DEGRADED = "complete", "degraded"

#: Every column in the order the plugin prints them.
COLUMNS: Tuple[Column, ...] = (
    OBJECT,
    NAME,
    ALLOW_MULTIPLE,
    FOUND_BY,
    REGISTRATION,
    ROUTINE,
    CONTEXT,
    BUSY,
    UNREGISTER_WAITING,
    MODULE,
    SYMBOL,
    FLAGS,
    LANDING,
    LANDING_OWNER,
    EVIDENCE,
)
#: The columns a JSON output must have to be read back.
READ_BACK: Tuple[str, ...] = tuple(column.name for column in COLUMNS if column.read_back)
