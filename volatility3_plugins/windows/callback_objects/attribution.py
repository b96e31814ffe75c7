"""Owner module, symbol and section of a routine address.

Modules come from ``PsLoadedModuleList`` (Volatility's ``modules.Modules.list_modules``), each
covering [DllBase, DllBase + SizeOfImage). Symbols: the kernel ISF for the kernel image,
export names (read from memory, pefile) for drivers, otherwise ``module+0xOFFSET``. Sections
come from the in-memory section headers and decide ``non_executable``.
"""

import bisect
import dataclasses
import itertools
import logging
from typing import Dict, Iterable, List, Optional

from volatility3.framework import constants, exceptions, interfaces
from volatility3.plugins.windows import modules as vol_modules

from volatility3.plugins.windows.callback_objects import pe_image

vollog = logging.getLogger(__name__)

MAX_MODULES = 4096


@dataclasses.dataclass(frozen=True)
class LoadedModule:
    base: int
    size: int
    name: Optional[str]  # BaseDllName; None when unreadable
    is_kernel: bool
    #: Found by pool scanning (its loader entry), not in PsLoadedModuleList
    hidden: bool = False

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    @property
    def label(self) -> str:
        return self.name if self.name else f"{self.base:#x}"


@dataclasses.dataclass(frozen=True)
class Attribution:
    module: Optional[LoadedModule]
    symbol: Optional[str]
    section: Optional[str]
    #: None when unknown (no module, or its section headers unreadable)
    executable: Optional[bool]

    @property
    def in_module(self) -> bool:
        """In a module of PsLoadedModuleList (a hidden module does not count)."""
        return self.module is not None and not self.module.hidden

    @property
    def hidden_module(self) -> bool:
        return self.module is not None and self.module.hidden


def list_loaded_modules(
    context: interfaces.context.ContextInterface, kernel_module_name: str
) -> Optional[List[LoadedModule]]:
    """The modules of PsLoadedModuleList, bounded, skipping entries without a usable range.
    None when the list cannot be walked at all (then no routine can be called outside)."""
    kernel = context.modules[kernel_module_name]
    mask = context.layers[kernel.layer_name].address_mask
    kernel_base = kernel.offset & mask
    found: List[LoadedModule] = []
    try:
        listed = vol_modules.Modules.list_modules(context, kernel_module_name)
        for mod in itertools.islice(listed, MAX_MODULES):
            try:
                base = int(mod.DllBase) & mask
                size = int(mod.SizeOfImage)
            except exceptions.InvalidAddressException:
                vollog.debug(f"module entry at {mod.vol.offset:#x} unreadable, skipped")
                continue
            if not base or not size:
                continue
            try:
                name: Optional[str] = mod.BaseDllName.get_string()
            except exceptions.InvalidAddressException:
                name = None
            found.append(LoadedModule(base, size, name or None, base == kernel_base))
    except exceptions.InvalidAddressException as excp:
        vollog.warning(f"PsLoadedModuleList walk stopped early: {excp}")
    except (exceptions.SymbolError, ValueError) as excp:
        vollog.warning(f"PsLoadedModuleList unavailable ({excp}): routines not attributed")
        return None
    if not found:
        vollog.warning("PsLoadedModuleList is empty: routines not attributed")
        return None
    return found


class Attributor:
    """Resolves routine addresses to modules; parses each module's PE at most once."""

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        loaded_modules: Optional[Iterable[LoadedModule]] = None,
        hidden_modules: Iterable[LoadedModule] = (),
    ) -> None:
        self._context = context
        self._kernel_module_name = kernel_module_name
        kernel = context.modules[kernel_module_name]
        self._layer_name = kernel.layer_name
        if loaded_modules is None:
            loaded_modules = list_loaded_modules(context, kernel_module_name)
        #: False when the module list could not be read: "in no module" would then be a guess.
        self.modules_available = loaded_modules is not None
        self._modules = sorted(loaded_modules or [], key=lambda m: m.base)
        self._bases = [m.base for m in self._modules]
        # Driver images that scanning sees and the list does not: consulted only for an
        # address in no listed module.
        self._hidden = sorted(
            (m for m in hidden_modules if self._listed_at(m.base) is None), key=lambda m: m.base
        )
        self._images: Dict[int, Optional[pe_image.PeImage]] = {}
        # Many registrations share a routine (one driver registers on many objects).
        self._attributions: Dict[int, Attribution] = {}

    @property
    def modules(self) -> List[LoadedModule]:
        return list(self._modules)

    def module_at(self, address: int) -> Optional[LoadedModule]:
        listed = self._listed_at(address)
        if listed is not None:
            return listed
        for hidden in self._hidden:
            if hidden.contains(address):
                return hidden
        return None

    @property
    def hidden_modules(self) -> List[LoadedModule]:
        return list(self._hidden)

    def _listed_at(self, address: int) -> Optional[LoadedModule]:
        index = bisect.bisect_right(self._bases, address) - 1
        # Ranges may overlap in hostile memory: check a few predecessors, not just one.
        for candidate in reversed(self._modules[max(0, index - 3) : index + 1]):
            if candidate.contains(address):
                return candidate
        return None

    def image(self, module: LoadedModule) -> Optional[pe_image.PeImage]:
        if module.base not in self._images:
            self._images[module.base] = pe_image.read_pe_image(
                self._context,
                self._layer_name,
                module.base,
                module.size,
                # The kernel's names come from its ISF, which also names non-exported code.
                with_exports=not module.is_kernel,
            )
        return self._images[module.base]

    def _kernel_symbol(self, address: int) -> Optional[str]:
        kernel = self._context.modules[self._kernel_module_name]
        try:
            names = kernel.get_symbols_by_absolute_location(address)
        except (exceptions.SymbolError, ValueError) as excp:
            vollog.log(constants.LOGLEVEL_VVV, f"kernel symbol lookup {address:#x}: {excp}")
            return None
        if not names:
            return None
        return sorted(name.split(constants.BANG, 1)[-1] for name in names)[0]

    def attribute(self, address: int) -> Attribution:
        found = self._attributions.get(address)
        if found is None:
            found = self._attributions[address] = self._attribute(address)
        return found

    def _attribute(self, address: int) -> Attribution:
        module = self.module_at(address)
        if module is None:
            return Attribution(module=None, symbol=None, section=None, executable=None)
        rva = address - module.base
        image = self.image(module)
        symbol: Optional[str] = None
        if module.is_kernel:
            symbol = self._kernel_symbol(address)
        elif image is not None:
            symbol = image.exports.get(rva)
        if symbol is None:
            symbol = f"{module.label}+{rva:#x}"
        section_name: Optional[str] = None
        executable: Optional[bool] = None
        if image is not None:
            section = image.section_at(rva)
            if section is not None:
                section_name, executable = section.name, section.executable
            else:
                # Headers and gaps between sections are mapped without execute permission.
                executable = False
        return Attribution(module=module, symbol=symbol, section=section_name, executable=executable)
