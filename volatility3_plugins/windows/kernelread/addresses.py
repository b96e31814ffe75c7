"""Facts of the Windows kernel's address space that every reader shares, for x64 and x86.

Volatility's Intel layers address memory with the layer's width (48 bits on x64, not
sign-extended); the kernel computes with canonical pointers (bit 47 copied into the top 16 bits).
Both forms meet here: a key the kernel derives from an address, or a raw pointer read from
memory, is canonical; an address handed to a layer is masked.

Standard library only.
"""

# The page size is the common package's (the crash-dump layer's too); kept importable from here.
from ...common.units import PAGE_SIZE  # noqa: F401

#: Where the kernel half of the address space starts, as a layer addresses it.
KERNEL_HALF_X64 = 1 << 47
KERNEL_HALF_X86 = 0x80000000


def kernel_half_start(pointer_size: int) -> int:
    """The lowest address of the kernel half: bit 47 set on x64, 2 GiB and up on x86."""
    return KERNEL_HALF_X64 if pointer_size == 8 else KERNEL_HALF_X86


def canonical(address: int, pointer_size: int) -> int:
    """``address`` as the kernel computes with it: on x64, bit 47 extended into the top 16 bits
    (the sign extension a 48-bit layer address lacks); x86 addresses are already whole."""
    if pointer_size == 8 and address & KERNEL_HALF_X64:
        return address | 0xFFFF_0000_0000_0000
    return address


def is_kernel_pointer(raw: int, pointer_size: int) -> bool:
    """A raw (unmasked) pointer value into the kernel half: canonical with bit 47 set on x64, at
    or above 2 GiB on x86."""
    start = canonical(kernel_half_start(pointer_size), pointer_size)
    return start <= raw < 1 << (8 * pointer_size)
