"""Reading the Windows kernel from a memory image, for any plugin: nothing here knows what a
plugin looks for (callbacks, pool blocks, ...).

- ``context``: the run context (:class:`~.context.KernelContext`), built once per run;
- ``addresses``: page size, canonical addresses, the kernel half;
- ``pages``, ``views``, ``symbols``: the page reader, structure views compiled from symbol
  tables, the kernel's symbols;
- ``lists``: the bounded two-way LIST_ENTRY walker, singly linked chains and SLISTs;
- ``object_headers``, ``object_directory``, ``loaded_modules``: objects' names and types, the
  object namespace's directories, PsLoadedModuleList;
- ``pe_image``, ``attribution``: the PE reader, owner module and symbol of an address;
- ``code``, ``exception_directory``: where control goes from an address (capstone), and the x64
  exception directory's functions;
- ``inverted_table``, ``driver_objects``, ``image_traces``: nt!PsInvertedFunctionTable, driver
  objects, and the images the module list lacks that those traces show;
- ``symbol_files``: the project's own ISF files (structures some builds' symbols lack);
- ``translation``: kernel ranges read by one walk of the page tables and large physical reads,
  below Volatility's per-page translation and per-read cache (the Volatility glue of the one
  page-table walker, ``common/page_tables.py``);
- ``image_extent``: what the image file lacks against the kernel's view of physical memory;
- ``physical_search``: pool tags searched in physical memory, mapped back to kernel addresses;
- ``diagnostics``: warnings said once and the state of each route (standard library only).

Volatility imports every module below the ``-p`` folder at start-up, so nothing here may do
work at import time. Modules import each other relatively and nothing outside this package.
"""
