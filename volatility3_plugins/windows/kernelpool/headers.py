"""``_POOL_HEADER`` as the kernel lays it out: one view for every reader and scanner."""

from typing import TYPE_CHECKING, Sequence

from volatility3.framework import constants

from ..kernelread.views import StructView

if TYPE_CHECKING:
    from ..kernelread.context import KernelContext

#: Vista and later store the pool type plus one in ``PoolType`` and clear this bit on every free
#: (``MARK_POOL_HEADER_FREED``): an allocated non-paged block reads 2, freed 0; paged 3, freed 1.
POOL_IN_USE_BIT = 0x2
#: Windows 7 and older set the top bit of a protected object's tag (``Cal\xec`` for ``Call``);
#: Windows 8 (build 9200) stopped setting it.
PROTECTED_BIT = 0x8000_0000


#: What a scan reads of a pool header; the classic reader's page chains need the links too.
SCAN_MEMBERS = ("BlockSize", "PoolType", "PoolTag")
CHAIN_MEMBERS = SCAN_MEMBERS + ("PreviousSize", "PoolIndex")


def pool_header_view(kernel: "KernelContext", members: Sequence[str] = SCAN_MEMBERS) -> StructView:
    """The kernel's ``_POOL_HEADER`` (``members`` of it), or Volatility's pool-header table where
    the kernel's ISF has none. Raises ViewError when neither fits."""
    if kernel.kernel_module.has_type("_POOL_HEADER"):
        table = kernel.kernel_module.symbol_table_name
    else:
        from volatility3.plugins.windows import poolscanner  # late: it imports the Windows symbols

        table = poolscanner.PoolScanner.get_pool_header_table(kernel.context, kernel.kernel_module.symbol_table_name)
    return StructView.compile(
        kernel.context, table + constants.BANG + "_POOL_HEADER", list(members), kernel.mask
    )


def block_unit(pointer_size: int) -> int:
    """``BlockSize`` unit and header alignment: 16 bytes on x64, 8 on x86 (also the segment
    heap's granule)."""
    return 0x10 if pointer_size == 8 else 8
