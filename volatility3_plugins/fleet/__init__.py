"""Triage at fleet scale: ``vol-callbackobjects sweep`` and ``vol-callbackobjects stack``.

- ``paths``: from command-line arguments (files, folders, globs, ``@list`` files) to paths, and
  short unique names for them;
- ``stack``: frequency stacking of many images' outputs, rarest registration first;
- ``sweep``: the plugin over many images, one process per image, locally or as tasks on a Dask
  ``distributed`` scheduler, resumable, with a sidecar per image;
- ``progress``: the progress bar over images; ``cli``: the two commands.

Volatility imports every module below its plugin folder at start-up, so these modules import
only the standard library at module level (``distributed`` is imported when a sweep is given a
scheduler) and do nothing at import time.
"""
