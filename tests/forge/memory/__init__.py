"""Floor 2, memory and page tables: physical memory, the paging modes and the bare machine.

- ``physical.py``: sparse physical memory handing out frames in a shuffled order; the address
  helpers every floor uses (``PAGE_SIZE``, ``canonical``, ``masked``);
- ``paging.py``: the x64, x86 PAE and x86 2-level address spaces and their self-maps;
- ``machine.py``: the bare :class:`~tests.forge.memory.machine.Machine`: where a Windows
  generation puts the DTB, the kernel, the pools (``AddressPlan``), one kernel address space,
  and typed writes of the profile's structures;
- ``kernel_pages.py``: which pages a kernel-only crash dump holds, by walking the page tables.

Imports only the profiles floor (below it: the machine writes the profile's structures).
"""
