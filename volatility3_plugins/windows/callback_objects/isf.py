"""Our ISF for ``_CALLBACK_OBJECT`` / ``_CALLBACK_REGISTRATION``: which of its files fits a kernel,
and loading it.

Neither structure is in any PDB, so the project ships hand-written ISF files in
``symbols/windows/``. The user never passes ``-s`` for them: :func:`symbol_directories` finds
them relative to this file.
"""

import dataclasses
import logging
import os
import pathlib
from typing import List, Optional

from volatility3.framework import interfaces, symbols
from volatility3.framework.symbols import intermed

vollog = logging.getLogger(__name__)

#: The ``Signature`` of every callback object: the bytes ``Call`` read as a little-endian ULONG.
CALLBACK_SIGNATURE = 0x6C6C6143

#: Present in the kernel from Windows 8.1 on, together with ``_CALLBACK_OBJECT.ExpCallbackList``.
LIST_HEAD_SYMBOL = "ExpCallbackListHead"

ISF_BASENAME = "callbackobjects"


def symbol_directories() -> List[str]:
    """Candidate folders holding ``windows/callbackobjects-*.json``, most specific first.

    In a checkout this file is ``volatility3_plugins/windows/callback_objects/isf.py``
    and the ISF lives in ``<checkout>/symbols``. An installed package can append its own data
    folder here.
    """
    here = pathlib.Path(__file__).resolve().parent
    candidates = [
        here.parent.parent.parent / "symbols",  # checkout: <repo>/symbols
        here.parent.parent / "symbols",  # package data inside volatility3_plugins/
    ]
    return [str(path) for path in candidates]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which of our four ISF files fits a kernel."""

    is_64bit: bool
    has_callback_list: bool  # Windows 8.1+: ExpCallbackListHead / ExpCallbackList exist

    @property
    def filename(self) -> str:
        arch = "x64" if self.is_64bit else "x86"
        suffix = "" if self.has_callback_list else "-win7"
        return f"{ISF_BASENAME}-{arch}{suffix}.json"

    @classmethod
    def for_kernel(cls, context: interfaces.context.ContextInterface, kernel_module_name: str) -> "Layout":
        """The layout of a kernel: the pointer size of its symbol table, and whether it has
        ``ExpCallbackListHead`` (the global object list, added with 8.1 together with the
        ``ExpCallbackList`` link that grows the object)."""
        kernel_module = context.modules[kernel_module_name]
        return cls(
            is_64bit=symbols.symbol_table_is_64bit(context=context, symbol_table_name=kernel_module.symbol_table_name),
            has_callback_list=kernel_module.has_symbol(LIST_HEAD_SYMBOL),
        )


def find_isf(filename: str) -> Optional[str]:
    """Returns the path of the first candidate folder holding ``windows/<filename>``."""
    for folder in symbol_directories():
        path = os.path.join(folder, "windows", filename)
        if os.path.isfile(path):
            return path
    return None


def load_table(
    context: interfaces.context.ContextInterface,
    config_path: str,
    layout: Layout,
) -> str:
    """Loads the ISF for ``layout`` into the context and returns the new table's name."""
    path = find_isf(layout.filename)
    if path is None:
        raise FileNotFoundError(
            f"{layout.filename} not found in any of: {', '.join(symbol_directories())}"
        )
    table_name = context.symbol_space.free_table_name(ISF_BASENAME)
    table = intermed.IntermediateSymbolTable(
        context=context,
        config_path=interfaces.configuration.path_join(config_path, table_name),
        name=table_name,
        isf_url=pathlib.Path(path).as_uri(),
    )
    context.symbol_space.append(table)
    vollog.debug(f"Loaded {path} as symbol table {table_name}")
    return table_name

