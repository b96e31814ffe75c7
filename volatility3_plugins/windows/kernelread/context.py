"""The run context: what the steps of one run share about the kernel, built once.

Like ``ssdt.SSDT.build_module_collection`` builds one module collection for every look-up, a
:class:`KernelContext` is built once per run and handed down: the Volatility context, the kernel
module and its layer, the address mask and pointer size, the build number, the page reader every
read goes through, the run's diagnostics, the kernel's symbols and the views of kernel types
compiled from its symbol table; and, built on first use (a failure remembered as a failure), the
object-header decoder, the loaded-module list, what the image file lacks (``image_extent``), the
code reader (one capstone decoder) and the images' exception directories. Functions take
``(kernel, address)``; nothing travels by hand. Its diagnostics collect warnings until
``kernel.diagnostics.flush()`` says them, one line per cause (``diagnostics``). It knows nothing
of what a plugin looks for: a plugin that needs more (its own
symbol table, its own views) extends it.
"""

import functools
import logging
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from volatility3.framework import exceptions, interfaces, symbols

from . import addresses
from .diagnostics import Diagnostics
from .pages import PageReader
from .symbols import KernelSymbols
from .translation import BulkReader
from .views import Record, StructView, ViewError, type_name

if TYPE_CHECKING:
    from .code import CodeReader
    from .exception_directory import ExceptionDirectories
    from .image_extent import Shortfall
    from .loaded_modules import ModuleList
    from .object_headers import ObjectHeaders

vollog = logging.getLogger(__name__)

#: Longest UNICODE_STRING read (bytes): object and module names are short; a longer Length is
#: corruption, not a name.
MAX_NAME_BYTES = 0x1000
#: Where every Windows kernel maps KUSER_SHARED_DATA.
KUSER_SHARED_DATA_X64 = 0xFFFFF78000000000
KUSER_SHARED_DATA_X86 = 0xFFDF0000
#: This project's table of the kernel structures some ISFs lack (x64), and where its configuration goes.
SUPPLEMENT_FILE = "kernel-supplement-x64.json"
SUPPLEMENT_CONFIG_PATH = "kernelread"


class KernelContext:
    """One run's view of the Windows kernel (see the module docstring)."""

    #: What the analyst loses when object headers cannot be decoded, said with the warning (a
    #: plugin that extends the context names its own losses).
    without_object_headers = "object names and types cannot be read"

    def __init__(self, context: interfaces.context.ContextInterface, kernel_module_name: str) -> None:
        self.context = context
        self.kernel_module_name = kernel_module_name
        self.kernel_module: interfaces.context.ModuleInterface = context.modules[kernel_module_name]
        self.layer_name: str = self.kernel_module.layer_name
        self.layer = context.layers[self.layer_name]
        self.mask: int = self.layer.address_mask
        is_64bit = symbols.symbol_table_is_64bit(context=context, symbol_table_name=self.kernel_module.symbol_table_name)
        self.pointer_size: int = 8 if is_64bit else 4
        #: Kernel ranges read at memory speed (:mod:`.translation`); None when the layer is not
        #: Intel paging read that way (then everything goes through Volatility).
        self.bulk: Optional[BulkReader] = BulkReader.for_layer(context, self.layer)
        self.reader = PageReader(self.layer, bulk=self.bulk)
        #: Warnings said once and the state of each route (never a logger: it also remembers).
        self.diagnostics = Diagnostics()
        self.symbols = KernelSymbols(context, self.kernel_module, self.mask)
        #: The kernel image's base, masked as the layer addresses it.
        self.base: int = self.symbols.base
        self._kernel_views: Dict[Tuple[str, Tuple[str, ...]], Optional[StructView]] = {}

    # -- reads ---------------------------------------------------------------------------

    def read_pointer(self, address: int) -> int:
        """A pointer masked as Volatility renders it; raises InvalidAddressException."""
        return self.reader.pointer(address, self.pointer_size)

    def read_global_pointer(self, name: str) -> Optional[int]:
        """The pointer stored in ``nt!name``; None when absent or unreadable."""
        address = self.symbols.address(name)
        if address is None:
            return None
        try:
            return self.read_pointer(address)
        except exceptions.InvalidAddressException:
            return None

    def is_kernel_pointer(self, raw: int) -> bool:
        """A raw (unmasked) pointer value into the kernel half (:func:`.addresses.is_kernel_pointer`)."""
        return addresses.is_kernel_pointer(raw, self.pointer_size)

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

    def record_unicode(self, record: Record, member: str) -> Optional[str]:
        """The text of ``record``'s ``UNICODE_STRING`` member ``member`` (:meth:`read_unicode`);
        None when its counts or buffer pointer were not read."""
        if not all(record.readable(f"{member}.{field}") for field in ("Length", "MaximumLength", "Buffer")):
            return None
        return self.read_unicode(record[f"{member}.Length"], record[f"{member}.MaximumLength"], record[f"{member}.Buffer"])

    # -- kernel types --------------------------------------------------------------------

    def kernel_type(self, name: str) -> str:
        """The full name (``table!name``) of a type of the kernel's symbol table."""
        return type_name(self.kernel_module.symbol_table_name, name)

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
                    self.context, self.kernel_type(name), members, self.mask, booleans=booleans, optional=optional
                )
            except ViewError as excp:
                if not quiet:
                    self.diagnostics.warning(f"Kernel symbol table unusable for {name}: {excp}")
                view = None
            self._kernel_views[key] = view
        return self._kernel_views[key]

    # -- built on first use --------------------------------------------------------------

    @functools.cached_property
    def build_number(self) -> Optional[int]:
        """The kernel's build: ``nt!NtBuildNumber`` (its low 16 bits; the high bits say free or
        checked build), else ``KUSER_SHARED_DATA.NtBuildNumber`` (Windows 10 and later), else
        None (read as zeros or not at all: no evidence)."""
        candidates = [self.symbols.address("NtBuildNumber")]
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
        decoded: then no object's name or type can be read."""
        from .object_headers import ObjectHeaders, ObjectHeadersUnusable

        try:
            return ObjectHeaders(self)
        except ObjectHeadersUnusable as excp:
            self.diagnostics.warning(f"Object headers unusable ({excp}): {self.without_object_headers}")
            return None

    @functools.cached_property
    def image_shortfalls(self) -> List["Shortfall"]:
        """Memory the image file lacks (a truncated crash dump, a raw image shorter than the RAM
        the kernel describes), checked once; empty when nothing is known missing."""
        from .image_extent import shortfalls

        return shortfalls(self)

    @functools.cached_property
    def loaded_modules(self) -> "ModuleList":
        """``PsLoadedModuleList``, walked once for the whole run."""
        from .loaded_modules import list_loaded_modules

        return list_loaded_modules(self)

    @functools.cached_property
    def supplement_table(self) -> Optional[str]:
        """This project's table of kernel structures some builds' ISFs lack
        (``symbols/windows/kernel-supplement-x64.json``), loaded on first use; None (said once)
        when it cannot be loaded."""
        from . import symbol_files

        try:
            return symbol_files.load_table(self.context, SUPPLEMENT_CONFIG_PATH, SUPPLEMENT_FILE, "kernelsupplement")
        except (FileNotFoundError, exceptions.VolatilityException) as excp:
            self.diagnostics.warning("Supplementary kernel symbol table unusable", SUPPLEMENT_FILE, str(excp))
            return None

    @functools.cached_property
    def code(self) -> "CodeReader":
        """The code reader: one capstone decoder for the run's mode, made on first use."""
        from .code import CodeReader

        return CodeReader(self.reader, self.pointer_size)

    @functools.cached_property
    def exception_directories(self) -> "ExceptionDirectories":
        """The images' exception directories (x64), each read once when first asked for."""
        from .exception_directory import ExceptionDirectories

        return ExceptionDirectories(self.reader)
