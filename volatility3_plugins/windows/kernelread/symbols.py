"""The kernel's symbols, looked up in the symbol table Volatility chose for the kernel module."""

import functools
from typing import Dict, Optional, Sequence

from volatility3.framework import exceptions, interfaces


class KernelSymbols:
    """Addresses of ``nt!`` symbols and the symbol at an address, for one run."""

    def __init__(self, context: interfaces.context.ContextInterface, kernel_module: interfaces.context.ModuleInterface, mask: int) -> None:
        self._context = context
        self._kernel_module = kernel_module
        self._mask = mask
        #: The kernel image's base, masked as the layer addresses it.
        self.base: int = kernel_module.offset & mask

    def has(self, name: str) -> bool:
        return self._kernel_module.has_symbol(name)

    def address(self, name: str) -> Optional[int]:
        """Absolute (masked) address of ``nt!name``, None when the table lacks it."""
        try:
            return (self._kernel_module.offset + self._kernel_module.get_symbol(name).address) & self._mask
        except exceptions.SymbolError:
            return None

    def with_prefix(self, prefix: str) -> Sequence[str]:
        """Every symbol name of the table that starts with ``prefix``, sorted."""
        table = self._context.symbol_space[self._kernel_module.symbol_table_name]
        return sorted(name for name in table.symbols if name.startswith(prefix))

    @functools.cached_property
    def _names_by_offset(self) -> Dict[int, str]:
        """Kernel symbol names by offset, the first by name where several share one.

        Built from the ISF's symbol dictionary in one pass where the table exposes it (tens of
        milliseconds for a real kernel's 40,000 symbols); Volatility's
        ``get_symbols_by_location`` builds a ``SymbolInterface`` per symbol first (about a
        second), so it is only the fallback for other table classes."""
        table = self._context.symbol_space[self._kernel_module.symbol_table_name]
        # IntermediateSymbolTable keeps the parsed ISF in its version-specific delegate.
        raw = getattr(getattr(table, "_delegate", table), "_json_object", {}).get("symbols")
        found: Dict[int, str] = {}
        if isinstance(raw, dict):
            for name, entry in raw.items():
                offset = entry.get("address") if isinstance(entry, dict) else None
                if isinstance(offset, int) and (offset not in found or name < found[offset]):
                    found[offset] = name
            return found
        for name in table.symbols:
            offset = table.get_symbol(name).address
            if offset not in found or name < found[offset]:
                found[offset] = name
        return found

    def name_at(self, address: int) -> Optional[str]:
        """The kernel symbol at exactly ``address`` (the first by name when several share it)."""
        return self._names_by_offset.get((address - self.base) & self._mask)
