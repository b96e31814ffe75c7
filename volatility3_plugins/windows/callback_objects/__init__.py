"""Building blocks of ``windows.callbackobjects``, one job per module.

- ``kernel``: the run context (:class:`~.kernel.KernelContext`), built once per run;
- ``pagecache``, ``views``: the page reader and the structure views compiled from ISFs;
- ``structures``: our ISF for ``_CALLBACK_OBJECT`` / ``_CALLBACK_REGISTRATION``;
- ``walk``: the bounded two-way LIST_ENTRY walker;
- ``object_headers``, ``loaded_modules``: kernel objects' names and types, PsLoadedModuleList;
- ``routes``: the list, directory and global routes to callback objects;
- ``poolscan``: the pool scan and its declared table of targets;
- ``merge``, ``registrations``, ``rows``, ``flags``: merging routes into objects, reading
  registrations, building rows and classifying them;
- ``attribution``, ``pe_image``, ``expected``: owner module and symbol of a routine, the PE
  reader, the expected-registrant data;
- ``report``: the pipeline from an image to its rows; ``diagnostics``: warnings said once and
  the state of each route.

Volatility imports every module below the ``-p`` folder at start-up, so nothing here may do
work at import time. Modules import each other relatively, so tools see the graph.
"""
