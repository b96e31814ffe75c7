"""The run context: everything the steps of one run share about the kernel, built once.

Like ``ssdt.SSDT.build_module_collection`` builds one module collection for every look-up, a
:class:`KernelContext` is built once per run and handed down: the kernel module and its layer,
the address mask and pointer size, the build number, the page reader every read goes through,
the compiled structure views, and (built on first use, a failure remembered as a failure) the
object-header decoder, the loaded-module list and the kernel-symbol look-up. Functions of this
package take ``(kernel, address)``; nothing travels by hand.
"""

import functools
import logging
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from volatility3.framework import exceptions, interfaces, symbols

from . import structures
from .diagnostics import Diagnostics
from .pagecache import PageReader
from .views import StructView, ViewError, type_name

if TYPE_CHECKING:
    from .loaded_modules import ModuleList
    from .object_headers import ObjectHeaders

vollog = logging.getLogger(__name__)

#: Longest UNICODE_STRING read (bytes): object and module names are short; a longer Length is
#: corruption, not a name.
MAX_NAME_BYTES = 0x1000
#: Where every Windows kernel maps KUSER_SHARED_DATA.
KUSER_SHARED_DATA_X64 = 0xFFFFF78000000000
KUSER_SHARED_DATA_X86 = 0xFFDF0000


class KernelContext:
    """One run's view of the Windows kernel (see the module docstring)."""

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: str,
        layout: structures.Layout,
    ) -> None:
        self.context = context
        self.module_name = kernel_module_name
        self.module: interfaces.context.ModuleInterface = context.modules[kernel_module_name]
        self.layer_name: str = self.module.layer_name
        self.layer = context.layers[self.layer_name]
        self.mask: int = self.layer.address_mask
        self.layout = layout
        self.pointer_size: int = layout.pointer_size
        self.callback_table = callback_table_name
        self.reader = PageReader(self.layer)
        self.log = Diagnostics()
        self.base: int = self.module.offset & self.mask
        self._kernel_views: Dict[Tuple[str, Tuple[str, ...]], Optional[StructView]] = {}
        #: ``_CALLBACK_OBJECT`` and ``_CALLBACK_REGISTRATION`` from our own ISF.
        self.callback_object = StructView.compile(
            context,
            type_name(callback_table_name, "_CALLBACK_OBJECT"),
            [
                "Signature",
                "RegisteredCallbacks.Flink",
                "AllowMultipleCallbacks",
                "ExpCallbackList.Flink",
            ],
            self.mask,
            booleans=["AllowMultipleCallbacks"],
            optional=["ExpCallbackList.Flink"],
        )
        self.registration = StructView.compile(
            context,
            type_name(callback_table_name, "_CALLBACK_REGISTRATION"),
            [
                "Link.Flink",
                "CallbackObject",
                "CallbackFunction",
                "CallbackContext",
                "Busy",
                "UnregisterWaiting",
            ],
            self.mask,
            booleans=["UnregisterWaiting"],
        )

    @classmethod
    def build(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str,
        callback_table_name: Optional[str] = None,
    ) -> "KernelContext":
        """Chooses our structure layout for this kernel, loads its ISF (unless
        ``callback_table_name`` names one already loaded) and builds the context."""
        kernel = context.modules[kernel_module_name]
        layout = structures.Layout(
            is_64bit=symbols.symbol_table_is_64bit(
                context=context, symbol_table_name=kernel.symbol_table_name
            ),
            has_callback_list=kernel.has_symbol(structures.LIST_HEAD_SYMBOL),
        )
        if callback_table_name is None:
            callback_table_name = structures.load_table(context, config_path, layout)
        return cls(context, kernel_module_name, callback_table_name, layout)

    # -- symbols and reads -------------------------------------------------------------

    def has_symbol(self, name: str) -> bool:
        return self.module.has_symbol(name)

    def symbol(self, name: str) -> Optional[int]:
        """Absolute (masked) address of ``nt!name``, None when the table lacks it."""
        try:
            return (self.module.offset + self.module.get_symbol(name).address) & self.mask
        except exceptions.SymbolError:
            return None

    def symbols_with_prefix(self, prefix: str) -> Sequence[str]:
        table = self.context.symbol_space[self.module.symbol_table_name]
        return sorted(name for name in table.symbols if name.startswith(prefix))

    def read_pointer(self, address: int) -> int:
        """A pointer masked as Volatility renders it; raises InvalidAddressException."""
        return self.reader.pointer(address, self.pointer_size)

    def read_global_pointer(self, name: str) -> Optional[int]:
        """The pointer stored in ``nt!name``; None when absent or unreadable."""
        address = self.symbol(name)
        if address is None:
            return None
        try:
            return self.read_pointer(address)
        except exceptions.InvalidAddressException:
            return None

    def is_kernel_pointer(self, raw: int) -> bool:
        """A raw (unmasked) pointer value into the kernel half: canonical with bit 47 set on
        x64, at or above 2 GiB on x86."""
        if self.pointer_size == 8:
            return raw >> 47 == 0x1FFFF
        return 0x80000000 <= raw <= 0xFFFFFFFF

    def read_unicode(self, length: int, maximum: int, buffer: int) -> Optional[str]:
        """A ``UNICODE_STRING``'s text, with the checks of Volatility's ``get_string``: None when
        the counts are inconsistent or absurd, or the buffer unreadable or empty up to its NUL."""
        if length == 0 or maximum == 0 or length > maximum or length > MAX_NAME_BYTES or length % 2:
            return None
        try:
            text = self.reader.read(buffer, length).decode("utf-16-le", errors="replace")
        except exceptions.InvalidAddressException:
            return None
        end = text.find("\x00")
        # A buffer of zeros (a page the acquisition could not read) is no name at all.
        return (text if end < 0 else text[:end]) or None

    def kernel_view(
        self,
        name: str,
        members: Sequence[str],
        booleans: Sequence[str] = (),
        optional: Sequence[str] = (),
        quiet: bool = False,
    ) -> Optional[StructView]:
        """A view of a kernel type (``_OBJECT_HEADER``, ...), compiled once; None (said once,
        unless ``quiet``: the caller has another way) when the kernel's symbol table lacks the
        type or a member."""
        key = (name, tuple(members))
        if key not in self._kernel_views:
            try:
                view: Optional[StructView] = StructView.compile(
                    self.context,
                    type_name(self.module.symbol_table_name, name),
                    members,
                    self.mask,
                    booleans=booleans,
                    optional=optional,
                )
            except ViewError as excp:
                if not quiet:
                    self.log.warning(f"Kernel symbol table unusable for {name}: {excp}")
                view = None
            self._kernel_views[key] = view
        return self._kernel_views[key]

    # -- built on first use --------------------------------------------------------------

    @functools.cached_property
    def build_number(self) -> Optional[int]:
        """The kernel's build: ``nt!NtBuildNumber`` (its low 16 bits; the high bits say free or
        checked build), else ``KUSER_SHARED_DATA.NtBuildNumber`` (Windows 10 and later), else
        None (read as zeros or not at all: no evidence)."""
        candidates = [self.symbol("NtBuildNumber")]
        kuser = self.kernel_view("_KUSER_SHARED_DATA", ["NtBuildNumber"], quiet=True)
        if kuser is not None:
            shared = KUSER_SHARED_DATA_X64 if self.pointer_size == 8 else KUSER_SHARED_DATA_X86
            candidates.append((shared + kuser.offset("NtBuildNumber")) & self.mask)
        for address in candidates:
            if address is None:
                continue
            try:
                value = int.from_bytes(self.reader.read(address, 4), "little") & 0xFFFF
            except exceptions.InvalidAddressException:
                continue
            if value:
                return value
        return None

    @functools.cached_property
    def object_headers(self) -> Optional["ObjectHeaders"]:
        """The object-header decoder; None (said once) when this kernel's headers cannot be
        decoded: then the directory route, names and the object scan are unavailable."""
        from .object_headers import ObjectHeaders, ObjectHeadersUnusable

        try:
            return ObjectHeaders(self)
        except ObjectHeadersUnusable as excp:
            self.log.warning(f"Object headers unusable ({excp}): directory route, names and object scan skipped")
            return None

    @functools.cached_property
    def loaded_modules(self) -> "ModuleList":
        """``PsLoadedModuleList``, walked once for the whole run."""
        from .loaded_modules import list_loaded_modules

        return list_loaded_modules(self)

    @functools.cached_property
    def _symbols_by_offset(self) -> Dict[int, str]:
        """Kernel symbol names by offset, the first by name where several share one.

        Built from the ISF's symbol dictionary in one pass where the table exposes it (tens of
        milliseconds for a real kernel's 40,000 symbols); Volatility's
        ``get_symbols_by_location`` builds a ``SymbolInterface`` per symbol first (about a
        second), so it is only the fallback for other table classes."""
        table = self.context.symbol_space[self.module.symbol_table_name]
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

    def kernel_symbol_at(self, address: int) -> Optional[str]:
        """The kernel symbol at exactly ``address`` (the first by name when several share it)."""
        return self._symbols_by_offset.get((address - self.base) & self.mask)
