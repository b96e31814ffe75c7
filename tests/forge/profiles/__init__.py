"""Floor 1, kernel profiles: where a Windows build puts each structure field and global.

- ``layout.py``: :class:`~tests.forge.profiles.layout.KernelLayout`, built from a built-in
  profile (the ``*.json`` files beside it, written by ``tools/extract_profile.py``; ``README.md``
  says from what) or from a real Volatility 3 ISF.

The lowest floor: it imports nothing of the forge, and every floor above takes its offsets and
sizes from it.
"""
