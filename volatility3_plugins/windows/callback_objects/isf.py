"""Our ISF for ``_CALLBACK_OBJECT`` / ``_CALLBACK_REGISTRATION``: which of its files fits a kernel,
and loading it.

Neither structure is in any PDB, so the project ships hand-written ISF files in
``symbols/windows/``. The user never passes ``-s`` for them: :mod:`..kernelread.symbol_files`
finds them.
"""

import dataclasses

from volatility3.framework import interfaces, symbols

from ..kernelread import symbol_files

#: The ``Signature`` of every callback object: the bytes ``Call`` read as a little-endian ULONG.
CALLBACK_SIGNATURE = 0x6C6C6143

#: Present in the kernel from Windows 8.1 on, together with ``_CALLBACK_OBJECT.ExpCallbackList``.
LIST_HEAD_SYMBOL = "ExpCallbackListHead"

ISF_BASENAME = "callbackobjects"


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


def load_table(
    context: interfaces.context.ContextInterface,
    config_path: str,
    layout: Layout,
) -> str:
    """Loads the ISF for ``layout`` into the context and returns the new table's name."""
    return symbol_files.load_table(context, config_path, layout.filename, ISF_BASENAME)
