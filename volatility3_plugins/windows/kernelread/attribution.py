"""Owner module, symbol and section of a routine address.

Modules come from ``PsLoadedModuleList`` (:mod:`.loaded_modules`), each covering
[DllBase, DllBase + SizeOfImage). Symbols: the kernel ISF for the kernel image, export names
(read from memory, pefile) for drivers, otherwise ``module+0xOFFSET``. Sections come from the
in-memory section headers and decide ``non_executable``.
"""

import bisect
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Tuple, Union

from . import pe_image
from .loaded_modules import MAX_MODULES, LoadedModule, ModuleList

if TYPE_CHECKING:
    from .context import KernelContext

vollog = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Attribution:
    module: Optional[LoadedModule]
    symbol: Optional[str]
    section: Optional[str]
    #: None when unknown (no module, or its section headers unreadable)
    executable: Optional[bool]
    #: ``symbol`` names the address itself (a kernel symbol or an export), not ``module+0xOFFSET``
    exact: bool = False

    @property
    def in_module(self) -> bool:
        """In a module of PsLoadedModuleList (a hidden module does not count)."""
        return self.module is not None and not self.module.hidden

    @property
    def hidden_module(self) -> bool:
        return self.module is not None and self.module.hidden


class Attributor:
    """Resolves routine addresses to modules; parses each module's PE at most once.

    ``hidden_modules``: images that other traces show and the list does not (see
    :mod:`.image_traces`), or a function giving them, called the first time an address lies in
    no listed module (never, when every address does: :attr:`consulted_hidden` tells)."""

    def __init__(
        self,
        kernel: "KernelContext",
        module_list: Optional[ModuleList] = None,
        hidden_modules: Union[Iterable[LoadedModule], Callable[[], Iterable[LoadedModule]]] = (),
    ) -> None:
        self._kernel = kernel
        module_list = module_list if module_list is not None else kernel.loaded_modules
        #: The module list could be read at all.
        self.modules_available = module_list.available
        #: "In no module" is evidence only when the whole module list was read.
        self.modules_complete = module_list.available and module_list.complete
        self._modules = sorted(module_list.modules, key=lambda m: m.base)
        self._bases = [m.base for m in self._modules]
        self._hidden_source = hidden_modules
        #: image base -> (its module, its parsed headers; None when they could not be read)
        self._images: Dict[int, Tuple[LoadedModule, Optional[pe_image.PeImage]]] = {}
        # Many registrations share a routine (one driver registers on many objects).
        self._attributions: Dict[int, Attribution] = {}

    @functools.cached_property
    def _hidden(self) -> List[LoadedModule]:
        """Images other traces show and the list does not: consulted only for an address in no
        listed module."""
        source = self._hidden_source() if callable(self._hidden_source) else self._hidden_source
        return sorted((m for m in list(source)[:MAX_MODULES] if self._listed_at(m.base) is None), key=lambda m: m.base)

    @property
    def consulted_hidden(self) -> bool:
        """Some address lay in no listed module, so the other traces were asked."""
        return "_hidden" in self.__dict__

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
            self._images[module.base] = module, pe_image.read_pe_image(
                self._kernel,
                module.base,
                module.size,
                # The kernel's names come from its ISF, which also names non-exported code.
                with_exports=not module.is_kernel,
            )
        return self._images[module.base][1]

    def image_headers(self) -> Tuple[int, List[str]]:
        """(how many images were asked about, the labels of those whose PE headers could not
        be read or are no PE): an address there has no section (no ``executable`` verdict) and
        no export name."""
        unreadable = [module.label for module, image in self._images.values() if image is None]
        return len(self._images), unreadable

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
            symbol = self._kernel.symbols.name_at(address)
        elif image is not None:
            symbol = image.exports.get(rva)
        exact = symbol is not None
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
        return Attribution(module=module, symbol=symbol, section=section_name, executable=executable, exact=exact)
