"""The baseline story: the callback objects of a booted Windows 10/11 and the drivers behind them.

Every scenario that needs a living system around its plants starts from :func:`baseline`
(``scenarios.py``: ``rootkit``, ``corrupt``; ``busy.py``); :class:`Story` is what a scenario
returns: the drivers it loaded, the objects it created by name, and routine lookup.
"""

import json
from pathlib import Path
from typing import Dict, List, Optional

from ..image.forge import ImageForge
from ..kernel.code import ARGUMENT_GADGET, THROUGH_GADGET
from ..kernel.modules import LoadedModule
from ..plants.callbacks import CallbackObject

PATCHGUARD_OBJECT = "542875F90F9B47F497B64BA219CACF69"
EXPECTED_REGISTRANTS = (Path(__file__).resolve().parents[3] / "volatility3_plugins" / "windows" / "callback_objects"
                        / "expected_registrants.json")

# Drivers of a booted system and their callback routines (RVA in .text); some are exported.
DRIVERS: Dict[str, Dict[str, int]] = {
    "ACPI.sys": {"ACPIPowerStateCallback": 0x1A40, "ACPISimulatorCallback": 0x2210},
    "ndis.sys": {"ndisPowerStateCallback": 0x1300, "ndisBindUnbindCallback": 0x1780, "ndisProcessorAddCallback": 0x1D00},
    "tcpip.sys": {"TcpConnectionCallback": 0x1100, "TcpTimerStarvationCallback": 0x1480, "TcpPowerCallback": 0x1900},
    "afd.sys": {"AfdTdxCallback": 0x1240},
    "WdFilter.sys": {"MpProcessNotificationCallback": 0x1600, "MpNriNotificationCallback": 0x1A00,
                     "MpImageVerificationCallback": 0x1E00, "MpBootDriverCallback": 0x2200},
    "WdNisDrv.sys": {"process_notification_callback": 0x1400},
    "mssecflt.sys": {"SecPatchGuardCallback": 0x1800, "SecPowerCallback": 0x1C00},
    "vmci.sys": {"VMCIDetachCallback": 0x1500},
    "lltdio.sys": {"LltdMapperCallback": 0x1200, "LltdRspndrCallback": 0x1600},
    "intelppm.sys": {"PpmPowerStateCallback": 0x1350, "PpmProcessorAddCallback": 0x1880},
    "dxgkrnl.sys": {"DxgkPowerStateCallback": 0x1440, "DxgkSessionCallback": 0x1990},
}
EXPORTED = {"ndis.sys": ("ndisPowerStateCallback",), "tcpip.sys": ("TcpConnectionCallback",), "WdFilter.sys": ("MpProcessNotificationCallback",)}
# Functions whose ordinary code holds, inside an instruction, the bytes of a gadget (what gadget
# hunters find in any signed driver); only the evasion scenario registers them.
GADGETS: Dict[str, Dict[str, str]] = {
    "ndis.sys": {"ndisBindUnbindCallback": ARGUMENT_GADGET},
    "tcpip.sys": {"TcpTimerStarvationCallback": THROUGH_GADGET},
}

# Objects: name -> (registrants, allow multiple). A registrant is "nt:Symbol" (a kernel
# routine, skipped where the build lacks it) or "driver.sys:Routine".
BUILTIN_OBJECTS: List[tuple] = [
    ("EnlightenmentState", ["nt:PpmHypervisorEnlightenmentCallback", "intelppm.sys:PpmPowerStateCallback"], True),
    ("SetSystemTime", ["nt:ExpMicrocodePowerStateCallback", "tcpip.sys:TcpTimerStarvationCallback"], True),
    ("SetSystemState", ["ACPI.sys:ACPIPowerStateCallback"], True),
    ("Phase1InitComplete", ["nt:SepImageVerificationCallbackWorker", "WdFilter.sys:MpNriNotificationCallback"], True),
    ("SeImageVerificationDriverInfo", ["nt:SepImageVerificationCallbackWorker", "WdFilter.sys:MpImageVerificationCallback"], True),
    ("PowerState", ["nt:HvlpPowerStateCallback", "nt:EtwpPowerStateCallback", "ACPI.sys:ACPIPowerStateCallback",
                    "ndis.sys:ndisPowerStateCallback", "intelppm.sys:PpmPowerStateCallback"], True),
    ("SoftRestart", ["nt:HalpKsrCallbackRoutine", "nt:PipKsrCallback", "nt:PopKsrCallback", "nt:EtwpKsrCallback"], True),
    ("BootDriver", [], True),
    ("ProcessorAdd", ["nt:KeRegisterProcessorChangeCallback", "ndis.sys:ndisProcessorAddCallback", "intelppm.sys:PpmProcessorAddCallback"], True),
    ("LicensingData", ["nt:ExpPowerStateTransitionCallbackForLicensing", "dxgkrnl.sys:DxgkSessionCallback"], True),
    ("IoSessionNotifications", ["dxgkrnl.sys:DxgkSessionCallback"], True),
    ("IoExternalDmaUnblock", ["nt:PipCslStateChangeCallback", "ACPI.sys:ACPISimulatorCallback"], True),
    (PATCHGUARD_OBJECT, ["mssecflt.sys:SecPatchGuardCallback"], True),
    ("AcpiSimulator", ["ACPI.sys:ACPISimulatorCallback"], True),
    ("VMCIDetachCB", ["vmci.sys:VMCIDetachCallback"], True),
    # Defender's private channels, registrants as the public sources give them (see the plugin's
    # expected_registrants.json): WdNisDrv.sys, WdFilter.sys, WdFilter.sys.
    ("WdProcessNotificationCallback", ["WdNisDrv.sys:process_notification_callback"], True),
    ("WdNriNotificationCallback", ["WdFilter.sys:MpNriNotificationCallback"], True),
    ("WdEbNotificationCallback", ["WdFilter.sys:MpBootDriverCallback"], True),
    ("NdisBindUnbind", ["ndis.sys:ndisBindUnbindCallback", "tcpip.sys:TcpPowerCallback"], True),
    ("TcpConnectionCallbackTemp", ["tcpip.sys:TcpConnectionCallback"], True),
    ("TcpTimerStarvationCallbackTemp", ["tcpip.sys:TcpTimerStarvationCallback"], True),
    ("AfdTdxCallback", ["afd.sys:AfdTdxCallback"], True),
    ("LLTDCallbackMapper0006008002000000", ["lltdio.sys:LltdMapperCallback"], True),
    ("LLTDCallbackRspndr0006008002000000", ["lltdio.sys:LltdRspndrCallback"], True),
]


# Objects ntoskrnl creates without a name (ExCreateCallback with ObjectName NULL) and binds to an
# ALPC port, one kernel routine each: PopUmpoInitializeChannel, PopUmpoInitializeMonitorChannel
# and SshpAlpcInitialize (decompiled ntoskrnl, several builds). The seed's table labels them
# \Callback\PowerPort, \Callback\PowerMonitorPort and \Callback\SleepstudyControlPort after
# their ports, but its own trace shows their names as (null). Label (a key of Story.objects, not
# a name) -> (kernel routine, allow multiple). Each exists only where the build has its routine
# (the ISFs: no PopUmpoMessageCallback on 7601, SshpAlpcMessageCallback on 20348 and 22000 only).
ALPC_PORT_OBJECTS: List[tuple] = [
    ("PowerPort", "PopUmpoMessageCallback", False),
    ("PowerMonitorPort", "PopMonitorAlpcCallback", True),
    ("SleepstudyControlPort", "SshpAlpcMessageCallback", False),
]


class Story:
    """Shared helpers for scenarios: the drivers of a booted system and routine lookup."""

    def __init__(self, forge: ImageForge) -> None:
        self.forge = forge
        self.drivers: Dict[str, LoadedModule] = {
            name: forge.add_driver(name, functions=functions, exported=EXPORTED.get(name, ()), gadgets=GADGETS.get(name))
            for name, functions in DRIVERS.items()
        }
        self.objects: Dict[Optional[str], CallbackObject] = {}
        self._contexts = 0

    def routine(self, registrant: str) -> Optional[int]:
        module, name = registrant.split(":", 1)
        if module == "nt":
            if not self.forge.layout.has_symbol(name):
                return None
            return self.forge.kernel.base + self.forge.layout.symbol(name)
        return self.drivers[module].address_of(name)

    def next_context(self) -> int:
        """Contexts look like what drivers pass: pool addresses or small integers."""
        self._contexts += 1
        return 0 if self._contexts % 3 == 0 else self.forge.machine.plan.nonpaged_pool + 0x80000 + self._contexts * 0x40


def expected_registrants() -> Dict[str, List[str]]:
    """The objects with fixed registrants and their modules, as the plugin's data file gives them:
    the truth predicts the plugin's output under its own rules."""
    document = json.loads(EXPECTED_REGISTRANTS.read_text())
    return {entry["name"]: list(entry["allowed_modules"]) for entry in document["objects"]}


def baseline(forge: ImageForge) -> Story:
    story = Story(forge)
    forge.expected_registrants.update(expected_registrants())
    for index, (name, registrants, allow_multiple) in enumerate(BUILTIN_OBJECTS):
        callback = forge.create_callback(name, allow_multiple=allow_multiple, creator_info=index % 4 == 1)
        story.objects[name] = callback
        routines = [story.routine(r) for r in registrants]
        # A kernel routine the build lacks is not registered (no stand-in: on Windows 7 the
        # soft-restart object then has no registration). Which objects a build creates is not
        # modelled: the seed's list is created on every build.
        routines = [r for r in routines if r is not None]
        for number, routine in enumerate(routines):
            forge.register(callback, routine, context=story.next_context(), busy=1 if (index + number) % 7 == 3 else 0)
    for label, routine, allow_multiple in ALPC_PORT_OBJECTS:
        if forge.layout.has_symbol(routine):
            port_object = forge.create_callback(None, allow_multiple=allow_multiple)
            story.objects[label] = port_object
            forge.register(port_object, story.routine(f"nt:{routine}"), context=story.next_context())
    # Drivers also create unnamed objects to talk to each other.
    for number, owner in enumerate(("ndis.sys:ndisBindUnbindCallback", "tcpip.sys:TcpConnectionCallback")):
        unnamed = forge.create_callback(None, allow_multiple=True)
        story.objects[f"unnamed{number}"] = unnamed
        forge.register(unnamed, story.routine(owner), context=story.next_context())
    # A registration that was undone: the block is free pool now, its contents stale.
    forge.register(story.objects["PowerState"], story.drivers["vmci.sys"].address_of("VMCIDetachCallback"), freed=True)
    return story
