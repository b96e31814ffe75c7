"""Forge of synthetic Windows memory images, in floors that import only the floors below them.

profiles <- memory <- allocators <- kernel <- plants <- image <- stories <- fleet (each
sub-package's docstring says what it holds; ``README.md`` the whole). The public entries:
``forge.py`` (``ImageForge``), ``scenarios.py`` (``SCENARIOS``, ``forge_scenario``), the
command lines ``python -m tests.forge`` and ``python -m tests.forge.fleet``.
"""
