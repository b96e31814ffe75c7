"""``windows.poolmap``: every block of the kernel pool, allocated or freed, as the allocator says.

The readers of ``kernelpool`` walk the allocator's own metadata (the segment heap from Windows 10
1903, the classic pool before it, ``nt!PoolBigPageTable`` on both) and know every block's state;
this plugin lists those blocks, sums them per tag as poolmon does on a live machine, and tells
which block holds an address, so that the hits of a pool scanner (``windows.psscan``,
``windows.modscan``, ``windows.driverscan``, ``windows.filescan``) can be told alive from freed.
It imports ``kernelread`` and ``kernelpool`` only. Details: docs/POOLMAP.md.
"""

import dataclasses
import json
import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from .kernelpool import blocks as pool_blocks
from .kernelpool.blocks import BlockFilter, TagSummary
from .kernelpool.maps import open_pool_map
from .kernelpool.state import (ALL_POOLS, NONPAGED, NONPAGED_NX, NONPAGED_SESSION, PAGED, PAGED_SESSION, Block,
                               BlockState, PoolMap)
from .kernelread.context import KernelContext

vollog = logging.getLogger(__name__)

#: ``--pool`` names (case does not matter) and the pools they mean.
POOL_NAMES = {
    "nonpaged": NONPAGED, "nonpagedpool": NONPAGED,
    "nonpagednx": NONPAGED_NX, "nonpagedpoolnx": NONPAGED_NX,
    "paged": PAGED, "pagedpool": PAGED,
    "nonpagedsession": NONPAGED_SESSION, "nonpagedpoolsession": NONPAGED_SESSION,
    "pagedsession": PAGED_SESSION, "pagedpoolsession": PAGED_SESSION,
}
STATE_NAMES = {state.value: state for state in (BlockState.ALLOCATED, BlockState.FREED, BlockState.UNKNOWN)}
#: Columns of another plugin's JSON output that hold the virtual address of what it found.
OFFSET_COLUMNS = ("Offset(V)", "Offset", "Offset (V)")
PHYSICAL_COLUMN = "Offset(P)"
#: Columns of a joined row named in ``Hit``, at most, those that name what was found first.
HIT_COLUMNS = 3
HIT_FIRST = ("PID", "ImageFileName", "Name", "Driver Name", "Service Key", "Path", "Base", "Start")

BLOCK_COLUMNS = [("Address", format_hints.Hex), ("Size", format_hints.Hex), ("Tag", str), ("Pool", str),
                 ("Allocator", str), ("State", str), ("Type", str), ("Name", str)]
LOOKUP_COLUMNS = [("Query", format_hints.Hex), ("Hit", str), ("Relation", str)] + BLOCK_COLUMNS
SUMMARY_COLUMNS = [("Tag", str), ("Pool", str), ("Allocated", int), ("AllocatedBytes", int), ("Freed", int),
                   ("FreedBytes", int), ("Unknown", int), ("UnknownBytes", int)]

#: Relations of a lookup's rows.
HOLDS, BEFORE, AFTER, NO_BLOCK = "holds", "before", "after", "no block"


class JoinError(Exception):
    """A ``--join`` file that is not a plugin's JSON output with virtual offsets."""


@dataclasses.dataclass(frozen=True)
class Lookup:
    """What the pool map says about one address: the block holding it and its neighbours."""

    query: int
    hit: Optional[str]
    block: Optional[Block]
    before: Optional[Block] = None
    after: Optional[Block] = None


def _absent(value: Optional[Any], factory=renderers.NotApplicableValue) -> Any:
    return factory() if value is None else value


class PoolMap(interfaces.plugins.PluginInterface):
    """Lists every kernel pool block the allocator's metadata describes, with its allocation
    state (allocated, freed, unknown), tag, pool and allocator, and the object it holds.

    Reusing it from another plugin: declare ``requirements.VersionRequirement(name="poolmap",
    component=PoolMap, version=(1, 0, 0))``; build the run state once
    (:meth:`build_kernel_context`), open the pool map once (:meth:`open_pool_map`) and pass both
    to :meth:`list_blocks`, :meth:`summarise` and :meth:`lookup`."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.ModuleRequirement(name="kernel", description="Windows kernel", architectures=["Intel32", "Intel64"]),
            requirements.ListRequirement(name="tag", element_type=str, optional=True,
                                         description="Only blocks with these tags (? matches any character; "
                                         "shorter than 4 characters: padded with spaces)"),
            requirements.ListRequirement(name="state", element_type=str, optional=True,
                                         description="Only blocks in these states: allocated, freed, unknown"),
            requirements.ListRequirement(name="pool", element_type=str, optional=True,
                                         description="Only blocks of these pools: NonPaged, NonPagedNx, Paged, "
                                         "NonPagedSession, PagedSession"),
            requirements.BooleanRequirement(name="summary", default=False, optional=True,
                                            description="Per tag and pool: blocks and bytes allocated, freed and "
                                            "of unknown state (as poolmon gives them)"),
            requirements.ListRequirement(name="address", element_type=int, optional=True,
                                         description="The block holding each of these addresses, and its neighbours"),
            requirements.ListRequirement(name="join", element_type=str, optional=True,
                                         description="JSON outputs (-r json) of pool scanners (windows.psscan, "
                                         "windows.modscan, windows.driverscan, windows.filescan, ...): the block "
                                         "holding each of their hits (--tag, --state and --pool select among them)"),
        ]

    # -- classmethods --------------------------------------------------------------------

    @classmethod
    def build_kernel_context(cls, context: interfaces.context.ContextInterface, kernel_module_name: str) -> KernelContext:
        """The state a run shares (layer, pointer size, build, page cache, bulk reader, symbols,
        diagnostics), built once; pass it as ``kernel=`` to the other classmethods."""
        return KernelContext(context, kernel_module_name)

    @classmethod
    def open_pool_map(
        cls, context: interfaces.context.ContextInterface, kernel_module_name: str, kernel: Optional[KernelContext] = None
    ) -> PoolMap:
        """The reader of this kernel's allocator for every pool (its problems said once, as
        warnings, through the run's diagnostics)."""
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name)
        return open_pool_map(kernel, ALL_POOLS)

    @classmethod
    def _opened(
        cls, context: interfaces.context.ContextInterface, kernel_module_name: str, kernel: Optional[KernelContext],
        pool_map: Optional[PoolMap],
    ) -> Tuple[KernelContext, PoolMap]:
        """The run context and the pool map a classmethod was given, built where it was not."""
        kernel = kernel or cls.build_kernel_context(context, kernel_module_name)
        return kernel, pool_map or cls.open_pool_map(context, kernel_module_name, kernel)

    @classmethod
    def list_blocks(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        wanted: BlockFilter = BlockFilter(),
        kernel: Optional[KernelContext] = None,
        pool_map: Optional[PoolMap] = None,
    ) -> Iterator[Block]:
        """Every block ``wanted`` selects, in address order.

        Args:
            context: The context to retrieve required elements (layers, symbol tables) from
            kernel_module_name: The name of the kernel module on which to operate
            wanted: Tags, states and pools to keep (empty: all)
            kernel: A run context from :meth:`build_kernel_context` (built when None)
            pool_map: A map from :meth:`open_pool_map` (opened when None)

        Returns:
            The blocks: address (pool header, or first byte of a big allocation), size, tag,
            pool, allocator and state
        """
        _kernel, pool_map = cls._opened(context, kernel_module_name, kernel, pool_map)
        return iter(wanted.select(pool_map.batches()))

    @classmethod
    def summarise(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        wanted: BlockFilter = BlockFilter(),
        kernel: Optional[KernelContext] = None,
        pool_map: Optional[PoolMap] = None,
    ) -> List[TagSummary]:
        """Per tag and pool: blocks and bytes allocated, freed and of unknown state, most
        allocated bytes first (arguments as :meth:`list_blocks`)."""
        _kernel, pool_map = cls._opened(context, kernel_module_name, kernel, pool_map)
        return pool_blocks.summarise(pool_map.batches(), wanted)

    @classmethod
    def lookup(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        addresses: Iterable[Tuple[int, Optional[str]]],
        kernel: Optional[KernelContext] = None,
        pool_map: Optional[PoolMap] = None,
    ) -> List[Lookup]:
        """For each (address, description) the block holding the address and its neighbours
        in its subsegment or page (arguments as :meth:`list_blocks`)."""
        kernel, pool_map = cls._opened(context, kernel_module_name, kernel, pool_map)
        found = []
        for address, hit in addresses:
            before, block, after = pool_map.neighbours(address & kernel.mask)
            found.append(Lookup(address & kernel.mask, hit, block, before, after))
        return found

    @staticmethod
    def read_scanner_hits(paths: Sequence[str]) -> List[Tuple[int, str]]:
        """(virtual address, description) of every row of other plugins' JSON outputs: the
        address from its ``Offset(V)`` or ``Offset`` column, the description from the file's
        name and the row's first other columns. Raises JoinError for a file that has none."""
        hits: List[Tuple[int, str]] = []
        for path in paths:
            try:
                with open(path, encoding="utf-8") as handle:
                    rows = json.load(handle)
            except (OSError, ValueError) as excp:
                raise JoinError(f"{path}: not a readable JSON output ({excp})") from excp
            if not isinstance(rows, list):
                raise JoinError(f"{path}: not a plugin's JSON output (-r json gives a list of rows)")
            for row in _flatten(rows):
                column = next((name for name in OFFSET_COLUMNS if isinstance(row.get(name), int)), None)
                if column is None:
                    if PHYSICAL_COLUMN in row:
                        raise JoinError(f"{path}: physical offsets ({PHYSICAL_COLUMN}); run the scanner without --physical")
                    raise JoinError(f"{path}: a row without an Offset(V) or Offset column")
                names = [name for name in HIT_FIRST if name in row] + [name for name in row if name not in HIT_FIRST]
                described = [f"{name}={_shown(row[name])}" for name in names
                             if name != column and not name.startswith("__") and row[name] not in (None, "", "Disabled")]
                hits.append((row[column], " ".join(described[:HIT_COLUMNS])))
        return hits

    # -- rendering -----------------------------------------------------------------------

    @staticmethod
    def block_values(kernel: KernelContext, block: Optional[Block]) -> Tuple:
        """The TreeGrid values of a block, in ``BLOCK_COLUMNS`` order (all absent without one)."""
        if block is None:
            return tuple(renderers.NotApplicableValue() for _ in BLOCK_COLUMNS)
        facts = pool_blocks.describe_object(kernel, block)
        if facts is None:
            type_name, name = renderers.NotApplicableValue(), renderers.NotApplicableValue()
        else:
            type_name = facts.type_name
            name = facts.name if facts.name is not None else renderers.NotApplicableValue()
        return (format_hints.Hex(block.address), format_hints.Hex(block.size),
                _absent(pool_blocks.tag_text(block.tag), renderers.NotAvailableValue), block.pool, block.allocator,
                str(block.state), type_name, name)

    def _filter(self) -> BlockFilter:
        states, pools = [], []
        for name in self.config.get("state") or []:
            if name.lower() not in STATE_NAMES:
                raise ValueError(f"--state {name}: one of {', '.join(STATE_NAMES)}")
            states.append(STATE_NAMES[name.lower()])
        for name in self.config.get("pool") or []:
            if name.lower() not in POOL_NAMES:
                raise ValueError(f"--pool {name}: one of NonPaged, NonPagedNx, Paged, NonPagedSession, PagedSession")
            pools.append(POOL_NAMES[name.lower()])
        return BlockFilter(tuple(self.config.get("tag") or ()), frozenset(states), frozenset(pools))

    def _listing(self, kernel: KernelContext, pool_map: PoolMap, wanted: BlockFilter) -> Iterator[Tuple[int, Tuple]]:
        name = kernel.kernel_module_name
        for block in self.list_blocks(self.context, name, wanted, kernel=kernel, pool_map=pool_map):
            yield 0, self.block_values(kernel, block)
        self._report(kernel, pool_map)

    def _summary(self, kernel: KernelContext, pool_map: PoolMap, wanted: BlockFilter) -> Iterator[Tuple[int, Tuple]]:
        for total in self.summarise(self.context, kernel.kernel_module_name, wanted, kernel=kernel, pool_map=pool_map):
            yield 0, (_absent(pool_blocks.tag_text(total.tag), renderers.NotAvailableValue), total.pool,
                      total.allocated, total.allocated_bytes, total.freed, total.freed_bytes, total.unknown,
                      total.unknown_bytes)
        self._report(kernel, pool_map)

    def _lookups(self, kernel: KernelContext, pool_map: PoolMap, queries: List[Tuple[int, Optional[str]]],
                 neighbours: bool, wanted: BlockFilter) -> Iterator[Tuple[int, Tuple]]:
        """The block holding each address (with its neighbours for ``--address``); joined hits
        are kept only where their block passes ``--tag``, ``--state`` and ``--pool``."""
        for found in self.lookup(self.context, kernel.kernel_module_name, queries, kernel=kernel, pool_map=pool_map):
            if found.hit is not None and not wanted.selects_all and (found.block is None or not wanted.wants(found.block)):
                continue
            head = (format_hints.Hex(found.query), _absent(found.hit))
            if found.block is None:
                yield 0, head + (NO_BLOCK,) + self.block_values(kernel, None)
            else:
                yield 0, head + (HOLDS,) + self.block_values(kernel, found.block)
            if neighbours:
                for relation, block in ((BEFORE, found.before), (AFTER, found.after)):
                    if block is not None:
                        yield 1, head + (relation,) + self.block_values(kernel, block)
        self._report(kernel, pool_map)

    def _report(self, kernel: KernelContext, pool_map: PoolMap) -> None:
        """What the enumeration could not read, once (opening the map said what it found then)."""
        problems = getattr(pool_map, "problems", [])[self._said:]
        if problems:
            kernel.diagnostics.warning(
                f"Pool metadata ({pool_map.name}) partly unreadable, those blocks are unknown or missing: "
                + "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            )
        # The run's diagnostics say recorded warnings when flushed: one line per cause.
        kernel.diagnostics.flush()

    def run(self) -> renderers.TreeGrid:
        wanted = self._filter()
        joined = self.read_scanner_hits(self.config.get("join") or [])
        addresses = [(address, None) for address in self.config.get("address") or []]
        kernel = self.build_kernel_context(self.context, self.config["kernel"])
        pool_map = self.open_pool_map(self.context, self.config["kernel"], kernel)
        self._said = len(getattr(pool_map, "problems", []))
        kernel.diagnostics.flush()  # what opening the map found, before the first row
        if addresses or joined:
            return renderers.TreeGrid(
                LOOKUP_COLUMNS, self._lookups(kernel, pool_map, addresses + joined, bool(addresses), wanted))
        if self.config.get("summary", False):
            return renderers.TreeGrid(SUMMARY_COLUMNS, self._summary(kernel, pool_map, wanted))
        return renderers.TreeGrid(BLOCK_COLUMNS, self._listing(kernel, pool_map, wanted))


def _shown(value: Any) -> str:
    """A joined row's value as its plugin printed it: addresses (JSON gives them as numbers) in hex."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return hex(value)
    return str(value)


def _flatten(rows: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Rows and their children (``__children`` in Volatility's JSON renderer)."""
    for row in rows:
        if isinstance(row, dict):
            yield row
            yield from _flatten(row.get("__children") or [])
