"""Floor 7, stories: what is planted into an :class:`ImageForge`, and what happens to an image after.

- ``baseline.py``: the callback objects of a booted Windows and the drivers behind them;
  :class:`Story`; every story that needs a living system starts from it;
- ``scenarios.py``: ``rootkit``, ``rootkit_unlinked``, ``corrupt``, ``scale``, the freed
  history every scenario gets, ``SCENARIOS`` and :func:`forge_scenario`;
- ``busy.py``: the benchmark's machine whose memory is nearly all in use;
- ``damage.py``: imperfect memory, planted into a built image or its files.

Imports: image and every floor below. Public entry: ``tests/forge/scenarios.py``.
"""
