"""Ready-made scenarios: each plants a story into a fresh :class:`ImageForge`.

- ``baseline``: the callback objects of a booted Windows 10/11 (the list of the seed article),
  1-5 registrations each in ntoskrnl or driver code, two unnamed objects, one object without
  registrations, one exclusive object and one freed registration block. Nothing suspicious
  (``baseline.py``, which the other stories build on).
- ``rootkit``: the baseline plus every suspicious flag of the notes planted at least once.
- ``rootkit_unlinked``: the same plants with every link the rootkit controls cut: its objects
  off ``ExpCallbackListHead`` and ``\\Callback``, its registrations off their objects' lists
  (flags then come from pool scanning: ``orphan_registration`` and the routine's location).
- ``corrupt``: the baseline plus broken lists: cycles, pointers to unmapped pages, a bad
  signature, an absurd name length, mismatched Blinks.
- ``scale``: 2,000 objects and 20,000 registrations, for speed.
- ``busy``: the baseline in a 4 GiB machine whose RAM is nearly all mapped and full (tens of
  thousands of pool blocks, cache pages, decoy tags): the benchmark's image (``busy.py``);
  ``busy_server``: the same with a server's heap (at least 512 MiB from 8 GiB of RAM).
- ``evasion``: the baseline plus routines that only look legitimate: argument gadgets, stubs in
  int3 padding and .text slack, a registration swapped to a bare ``ret``, a hidden driver known
  from its driver object and inverted-table entry, a manually mapped image (``evasion.py``).

Every scenario gets :func:`freed_history` as well (``forge_scenario``): registrations undone, a
callback object deleted, a driver unloaded, as on any machine that has been running a while.

To add one: write ``def my_story(forge: ImageForge) -> Story`` that plants what it needs (start
from :func:`baseline` if the story needs a living system around it) and add it to SCENARIOS.
"""

from typing import Callable, Dict

from ..allocators.pool import PoolKind
from ..image.forge import ImageForge
from ..memory.machine import DEFAULT_SEED
from .baseline import PATCHGUARD_OBJECT, Story, baseline
from .busy import busy, busy_server
from .evasion import evasion


def rootkit(forge: ImageForge, unlinked: bool = False) -> Story:
    """``unlinked``: the same plants with every list link the rootkit controls cut, as it would
    do to hide: its objects leave ExpCallbackListHead and \\Callback, its registrations leave
    their objects' lists (``ExCbSetSystemState`` still points at the decoy). Only pool scanning
    finds them then."""
    story = baseline(forge)
    objects = story.objects
    linked = not unlinked
    rk = forge.add_driver("rkdrv.sys", functions={"RkPowerHook": 0x1300, "RkDataStub": 0x9400}, exported=("RkPowerHook",))
    hidden = forge.add_driver("ghost.sys", functions={"GhostTimeHook": 0x1700}, in_module_list=False)
    shellcode = forge.allocate_code_outside_modules()

    # outside_modules: a routine in anonymous pool code
    forge.register(objects["PowerState"], shellcode, context=0, linked=linked)
    # hidden_module: a routine in a driver unlinked from PsLoadedModuleList
    forge.register(objects["SetSystemTime"], hidden.address_of("GhostTimeHook"), linked=linked)
    # non_executable: a routine pointing into a driver's .data
    forge.register(objects["SetSystemState"], rk.address_of("RkDataStub"), linked=linked)
    # unlinked_object: a channel object removed from ExpCallbackListHead (8.1+ keeps that list)
    channel = forge.create_callback("RkChannel", in_callback_list=False, in_directory=linked)
    forge.register(channel, rk.address_of("RkPowerHook"), context=0xDEAD, linked=linked)
    story.objects["RkChannel"] = channel
    # orphan_registration: a block that claims PowerState but is on no list
    forge.register(objects["PowerState"], rk.address_of("RkPowerHook"), linked=False)
    # bad_backlink: linked on ProcessorAdd, claims SetSystemTime
    forge.register(objects["ProcessorAdd"], rk.address_of("RkPowerHook"), backlink=objects["SetSystemTime"].address, linked=linked)
    # multiple_on_exclusive: a second routine on the exclusive (unnamed) PowerPort object; a
    # build without it (Windows 7: no user-mode power channel) gets no such plant
    if "PowerPort" in objects:
        forge.register(objects["PowerPort"], rk.address_of("RkPowerHook"), linked=linked)
    # bad_signature: an object whose body does not start with "Call"
    forged = forge.create_callback("RkForged", signature=0x41414141, in_callback_list=linked, in_directory=linked)
    forge.register(forged, rk.address_of("RkPowerHook"), linked=linked)
    story.objects["RkForged"] = forged
    # unexpected_registrant: rkdrv.sys on the PatchGuard object, where only mssecflt.sys belongs
    forge.register(objects[PATCHGUARD_OBJECT], rk.address_of("RkPowerHook"), linked=linked)
    # global_mismatch: nt!ExCbSetSystemState redirected to a look-alike object
    decoy = forge.create_callback("SetSystemStat3", in_callback_list=linked, in_directory=linked)
    forge.register(decoy, rk.address_of("RkPowerHook"), linked=linked)
    forge.point_global("ExCbSetSystemState", decoy)
    story.objects["SetSystemStat3"] = decoy
    return story


def rootkit_unlinked(forge: ImageForge) -> Story:
    return rootkit(forge, unlinked=True)


def corrupt(forge: ImageForge) -> Story:
    story = baseline(forge)
    drivers = story.drivers
    routine = drivers["ndis.sys"].address_of("ndisPowerStateCallback")
    unmapped = forge.unmapped_address
    machine = forge.machine
    pointer = forge.layout.pointer_size

    # A registration list whose last entry points back at its first: a cycle.
    cyclic = forge.create_callback("CorruptCycle")
    cycle_regs = [forge.register(cyclic, routine, context=n) for n in range(3)]
    forge.after_linking(lambda f: machine.write_pointer(cycle_regs[-1].address, cycle_regs[0].address))

    # A list cut by a pointer into an unmapped page after its first entry: the Blinks still
    # close the ring, so a two-way walk recovers every entry.
    dangling = forge.create_callback("CorruptDangling")
    dangling_regs = [forge.register(dangling, routine, context=n) for n in range(3)]
    forge.after_linking(lambda f: machine.write_pointer(dangling_regs[0].address, unmapped))

    # An object whose registration list head's Flink points nowhere (its Blink still closes).
    headless = forge.create_callback("CorruptHeadless")
    forge.register(headless, routine)
    forge.after_linking(lambda f: machine.write_pointer(headless.address + f.callbacks.layout.registered_callbacks, unmapped))

    # Mismatched Blinks: the Flinks close the ring, so the broken backward walk loses nothing.
    blinks = forge.create_callback("CorruptBlinks")
    blink_regs = [forge.register(blinks, routine, context=n) for n in range(2)]
    forge.after_linking(lambda f: machine.write_pointer(blink_regs[1].address + pointer, unmapped))

    # A bad signature and an absurd name length (the name cannot be trusted, the object can).
    bad = forge.create_callback("CorruptSignature", signature=0)
    forge.register(bad, routine)
    story.objects["CorruptSignature"] = bad
    long_name = forge.create_callback("CorruptName", name_length=0xFFF0)
    forge.register(long_name, routine)

    # A directory entry for an object in an unmapped page, and a hash chain that loops.
    def break_directory(f: ImageForge) -> None:
        directory = f.callbacks.directory
        entry = machine.pool.allocate(f.layout.size_of("_OBJECT_DIRECTORY_ENTRY"), b"ObDi", PoolKind.PAGED,
                                      role="directory_entry").body
        bucket = directory.body + f.layout.offset_of("_OBJECT_DIRECTORY", "HashBuckets")
        machine.write_struct(entry, "_OBJECT_DIRECTORY_ENTRY", {"ChainLink": machine.read_pointer(bucket), "Object": unmapped, "HashValue": 0})
        machine.write_pointer(bucket, entry)
        # Loop an entry that ends its chain, so that no other object drops out of the walk.
        chain_link = f.layout.offset_of("_OBJECT_DIRECTORY_ENTRY", "ChainLink")
        last = next(c.kernel_object.entries[0] for c in f.callbacks.callback_objects
                    if c.in_directory and machine.read_pointer(c.kernel_object.entries[0] + chain_link) == 0)
        machine.write_pointer(last + chain_link, last)

    forge.after_linking(break_directory)

    # The global object list loops back to its first object instead of the head.
    if forge.layout.has_callback_list:
        def loop_global_list(f: ImageForge) -> None:
            listed = [c for c in f.callbacks.callback_objects if c.in_callback_list]
            offset = f.callbacks.layout.callback_list
            machine.write_pointer(listed[-1].address + offset, listed[0].address + offset)

        forge.after_linking(loop_global_list)
    return story


def scale(forge: ImageForge, objects: int = 2000, registrations_per_object: int = 10) -> Story:
    story = Story(forge)
    routines = [module.address_of(name) for module in story.drivers.values() for name in module.functions]
    for number in range(objects):
        name = f"ScaleObject{number:05d}" if number % 2 == 0 else None
        callback = forge.create_callback(name)
        for index in range(registrations_per_object):
            forge.register(callback, routines[(number + index) % len(routines)], context=index)
    return story


# A driver of the boot that is gone now, with the routines it had registered.
UNLOADED_DRIVER = "oldvpnflt.sys"
UNLOADED_ROUTINES = {"VpnPowerStateCallback": 0x1400, "VpnTimeChangeCallback": 0x1A00, "VpnProcessorCallback": 0x2100}
# Routines of loaded drivers that registered for a while and unregistered.
UNREGISTERED_ROUTINES = ("ndis.sys:ndisPowerStateCallback", "tcpip.sys:TcpPowerCallback", "intelppm.sys:PpmProcessorAddCallback")
# Objects the undone registrations were on, when the scenario has them.
HISTORY_OBJECTS = ("PowerState", "SetSystemTime", "ProcessorAdd")
# A process that exited: (image name, PID, parent PID), started by explorer.exe.
EXITED_PROCESS = ("updater.exe", 4212, 3148)


def freed_history(story: Story) -> None:
    """What any machine that has been up a while leaves in freed pool: six registrations undone
    (their blocks freed, their ``Link`` stale into a live object's list, their ``CallbackObject``
    that live object), three with routines in loaded drivers and three in a driver since
    unloaded (its former range now unmapped), one callback object deleted (stale links into
    ``ExpCallbackListHead``), the unloaded driver's freed loader entry and driver object, and a
    process that exited (its token, object and threads freed). Nothing here is evidence of
    anything: a scanning run reports the registrations as ``freed`` and nothing else, the object
    and the loader entry not at all."""
    forge = story.forge
    gone = forge.add_unloaded_driver(UNLOADED_DRIVER, functions=UNLOADED_ROUTINES)
    live = [story.objects[name] for name in HISTORY_OBJECTS if name in story.objects]
    live += [c for c in forge.callbacks.live_objects if c not in live][: 3 - len(live)]
    routines = [story.routine(registrant) for registrant in UNREGISTERED_ROUTINES]
    routines += [gone.address_of(name) for name in UNLOADED_ROUTINES]
    for number, routine in enumerate(routines):
        assert routine is not None
        forge.register(live[number % len(live)], routine, context=story.next_context(), freed=True)
    # Named like the built-in objects, so that its size's LFH bucket is active on the segment heap.
    forge.create_callback("VpnStateNotify", deleted=True)
    # A program that ran and exited (where the layout describes processes): its process object
    # is freed pool that windows.psscan may still find.
    if forge.processes.supported:
        forge.add_exited_process(EXITED_PROCESS[0], EXITED_PROCESS[1], EXITED_PROCESS[2])


SCENARIOS: Dict[str, Callable[[ImageForge], Story]] = {
    "baseline": baseline,
    "rootkit": rootkit,
    "rootkit_unlinked": rootkit_unlinked,
    "corrupt": corrupt,
    "scale": scale,
    "busy": busy,
    "busy_server": busy_server,
    "evasion": evasion,
}


def forge_scenario(scenario: str, profile: str, memory_size: int = 0, seed: int = DEFAULT_SEED):
    """Build ``scenario`` (with its freed history) on ``profile`` (a built-in profile name or an
    ISF path)."""
    if scenario not in SCENARIOS:
        raise KeyError(f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
    forge = ImageForge.for_profile(profile, memory_size, seed)
    story = SCENARIOS[scenario](forge)
    freed_history(story)
    return forge.build()
