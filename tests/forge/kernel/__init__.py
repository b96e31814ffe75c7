"""Floor 4, kernel objects and modules: the kernel's own structures, in its image and in pool.

- ``machine.py``: :class:`~tests.forge.kernel.machine.KernelMachine`, the bare machine with
  ``KUSER_SHARED_DATA``, the processor start block and the build's pool allocator installed;
- ``pe.py``: PE images as the loader leaves them in memory;
- ``modules.py``: the kernel and driver images mapped, ``PsLoadedModuleList``, unloaded drivers;
- ``objects.py``: the object manager: types, directories, object headers and names;
- ``drivers.py``: a driver object per loaded driver in ``\\Driver``;
- ``processes.py``: the processes of a booted system on ``PsActiveProcessHead``.

Imports: allocators, memory, profiles.
"""
