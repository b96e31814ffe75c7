"""Floor 6, the image: the floors below assembled into one machine, built, and written.

- ``forge.py``: :class:`~tests.forge.image.forge.ImageForge`, the story API: pick a kernel, load
  drivers, add processes, plant callbacks, build;
- ``truth.py``: the ground truth of a built forge (what a correct plugin reports);
- ``output.py``: :class:`~tests.forge.image.output.ForgedImage`, what ``build()`` returns, and
  its writers: the memory in each format, the symbol table, ``truth.json``;
- ``dump.py``: the formats themselves: the raw image and the Windows crash dumps.

Building and writing share a floor because ``ImageForge.build()`` hands back the writer and
the truth reads the whole forge; ``dump.py`` itself needs only the memory floor.
Imports: plants, kernel, allocators, memory, profiles. Public entry: ``tests/forge/forge.py``.
"""
