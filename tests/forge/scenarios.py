"""The forge's public entry to its ready-made stories: ``SCENARIOS`` and :func:`forge_scenario`.

    from tests.forge.scenarios import forge_scenario
    image = forge_scenario("rootkit", "win10", seed=1)   # built, freed history included

The stories live in the stories floor (``stories/``: ``baseline.py``, which the others start
from, ``scenarios.py``, ``busy.py``); a new one is written there and added to ``SCENARIOS``
(``stories/scenarios.py``). This module only names them where callers import them from.
"""

from .stories.baseline import Story, baseline
from .stories.scenarios import SCENARIOS, forge_scenario, freed_history

__all__ = ["SCENARIOS", "forge_scenario", "freed_history", "Story", "baseline"]
