"""What is callback-specific in ``windows.callbackobjects``, one job per module, on top of
``..kernelread`` (reading the kernel) and ``..kernelpool`` (the pool and its scan engine).

- ``isf``, ``context``: our ISF for ``_CALLBACK_OBJECT`` / ``_CALLBACK_REGISTRATION``, and the
  run context with their views (:class:`~.context.CallbackContext`);
- ``routes``: the list, directory and global routes to callback objects;
- ``scan_targets``: what the pool scan looks for, and how a hit is validated;
- ``inventory``: the routes and the scan merged into one record per object, globals checked;
- ``registrations``: an object's registrations, and the loose ones the scan found;
- ``landing``: what a routine's code does (``trampoline``, ``mid_function``, ``code_cave``) and
  where control lands;
- ``classify``, ``rows``, ``expected``: facts to flags, output rows, the expected-registrant
  data;
- ``pipeline``: the rows of an image, one at a time, and their counts;
- ``verdict``: refusing an image that cannot support a verdict, and the verdict line.

Volatility imports every module below the ``-p`` folder at start-up, so nothing here may do
work at import time. Modules import each other relatively, so tools see the graph.
"""
