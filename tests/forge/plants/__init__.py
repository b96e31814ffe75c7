"""Floor 5, callback plants: what the plugin reads, planted as Windows leaves it or as an attacker does.

- ``callbacks.py``: callback objects (``ExCreateCallback``) and their registrations
  (``ExRegisterCallback``), ``ExpCallbackListHead``, ``\\Callback`` and the ``ExCb*`` globals,
  each with the anomalies a scenario asks for (unlinked, wrong backlink, bad signature, freed).

Imports: kernel, allocators, memory, profiles.
"""
