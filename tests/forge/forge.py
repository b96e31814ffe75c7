"""The forge's public entry: ``from tests.forge.forge import ImageForge``.

:class:`ImageForge` (the story API: pick a kernel, load drivers, plant callbacks, build; its
module, ``image/forge.py``, opens with an example) and :class:`ForgedImage` (what ``build()``
returns, and its writers: ``image/output.py``) live in the image floor; this module names them
where callers import them from. The ready-made stories: ``scenarios.py``.
"""

from .image.forge import ImageForge
from .image.output import ForgedImage, truth_text

__all__ = ["ImageForge", "ForgedImage", "truth_text"]
