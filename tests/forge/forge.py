"""The forge's public entry: :class:`ImageForge`, and the :class:`ForgedImage` it builds.

    from tests.forge.forge import ImageForge

    forge = ImageForge.for_profile("win10")
    driver = forge.add_driver("acme.sys", functions={"AcmePowerCallback": 0x1400})
    power = forge.create_callback("PowerState")
    forge.register(power, driver.address_of("AcmePowerCallback"), context=0x1234)
    image = forge.build()
    image.write(Path("out"))          # memory.raw, memory.dmp, symbols/, truth.json

Both live in the image floor (``image/forge.py``, ``image/output.py``); this module only names
them where callers have always imported them from. The ready-made stories: ``scenarios.py``.
"""

from .image.forge import ImageForge
from .image.output import ForgedImage, truth_text

__all__ = ["ImageForge", "ForgedImage", "truth_text"]
