"""Kernel layout of Windows 10 19041 x86 (ntkrpamp.pdb, PAE): facts for the forge.

Structure offsets and sizes are transcribed from Volatility 2's overlay generated from the real
PDB, ``volatility/plugins/overlays/windows/win10_x86_19041_vtypes.py`` (volatilityfoundation/
volatility, commit a438e768194a9e05eb4d9ee9338b881c0fa25937), keeping only the types and members
the forge writes or Volatility 3 requires (see tests/forge/tools/extract_profile.py:
FORGED_FIELDS, REQUIRED_BY_VOLATILITY). Members whose type the table leaves out point to
``void`` as in the generated x64 profiles. The _EPROCESS members Volatility's version heuristics
look at are the ones that exist on this build (VdmObjects and PaeTop are still there on x86;
ControlFlowGuardEnabled lives in an unnamed sub-structure, so it is not a direct member).

The global SYMBOLS below are NOT facts: their RVAs are only knowable from the real PDB, which
is not available here. They are plausible placements (code in .text/PAGE/INIT-like ranges,
data in a .data-like range, within an image of the size of a real ntkrpamp.exe) chosen so the
forge can synthesise a consistent image. ``ExpCallbackListHead``/``ExpCallbackListLock`` make
the forge use the 8.1+ callback layout and ``ObHeaderCookie`` the cookie-encoded type index, as
on the real build. The built-in profile's PDB GUID is synthetic as for every built-in profile.
"""

from .isf_types import (NT_PRODUCT_TYPE, X86_BASE_TYPES, array, base, bits, enum, opaque, ptr, ptr_base,
                        record, struct)

BUILD = 19041
NT_VERSION = (10, 0)
POINTER_SIZE = 4
PDB_NAME = "ntkrpamp.pdb"
PAE = True
SOURCE = "volatilityfoundation/volatility: volatility/plugins/overlays/windows/win10_x86_19041_vtypes.py"

BASE_TYPES = X86_BASE_TYPES
ENUMS = NT_PRODUCT_TYPE

# Plausible, not real (see the module docstring).
SYMBOLS = {
    # code
    "ExNotifyCallback": 0x5A2C0,
    "PopUmpoMessageCallback": 0x6B1E0,
    "ExRegisterCallback": 0x7C4A0,
    "ExUnregisterCallback": 0x7E910,
    "HalpPowerStateCallback": 0x9A3C0,
    "HvlpPowerStateCallback": 0x11C5A0,
    "PopKsrCallback": 0x15E2B0,
    "ExCreateCallback": 0x1B3F40,
    "PipCslStateChangeCallback": 0x1B7A60,
    "SepImageVerificationCallbackWorker": 0x1D0C90,
    "EtwpPowerStateCallback": 0x1E1F30,
    "KeRegisterProcessorChangeCallback": 0x1F2A80,
    "ExpMicrocodePowerStateCallback": 0x203D50,
    "ExpPowerStateTransitionCallbackForLicensing": 0x2058C0,
    "PpmHypervisorEnlightenmentCallback": 0x20E6A0,
    "HalpKsrCallbackRoutine": 0x21C7E0,
    "PipKsrCallback": 0x2284B0,
    "EtwpKsrCallback": 0x2391D0,
    "KiSystemStartup": 0x268E00,
    "ExpInitializeCallbacks": 0x2A1C40,
    # data
    "KdDebuggerDataBlock": 0x2F0A60,
    "KdVersionBlock": 0x2F2D40,
    "NtBuildNumber": 0x2F3200,
    "ExpCallbackListHead": 0x2F3A60,
    "ExpCallbackListLock": 0x2F3A68,
    "ExCbSetSystemTime": 0x2F3A6C,
    "ExCbEnlightenmentState": 0x2F3A70,
    "ExCbSeImageVerificationDriverInfo": 0x2F3A74,
    "ExCbPhase1InitComplete": 0x2F3A78,
    "ExCbProcessorAdd": 0x2F3A7C,
    "ExCbSetSystemState": 0x2F3A80,
    "ExCbPowerState": 0x2F3A90,
    "PsActiveProcessHead": 0x2F4BD0,
    "ObpRootDirectoryObject": 0x2F5A18,
    "ObpInfoMaskToOffset": 0x2F5E40,
    "PsLoadedModuleList": 0x2F6E60,
    "IoDriverObjectType": 0x2FCA28,
    "ObHeaderCookie": 0x2FCB90,
    "ExCallbackObjectType": 0x2FCDB0,
    "ObTypeIndexTable": 0x2FD2C0,
}

LIST_ENTRY = struct("_LIST_ENTRY")
UNICODE_STRING = struct("_UNICODE_STRING")
ULONG = base("unsigned long")
USHORT = base("unsigned short")
UCHAR = base("unsigned char")
LONG = base("long")
F3 = "unsigned long"  # native type of the _EPROCESS.Flags3 bit fields

USER_TYPES = {
    "_LIST_ENTRY": record(0x8, {"Flink": (0x0, ptr("_LIST_ENTRY")), "Blink": (0x4, ptr("_LIST_ENTRY"))}),
    "_UNICODE_STRING": record(0x8, {"Length": (0x0, USHORT), "MaximumLength": (0x2, USHORT),
                                    "Buffer": (0x4, ptr_base("wchar"))}),
    "_QUAD": record(0x8, {"UseThisFieldToCopy": (0x0, base("long long")), "DoNotUseThisField": (0x0, base("double"))}),
    "_EX_PUSH_LOCK": record(0x4, {
        "Locked": (0x0, bits(0, 1, "unsigned long")), "Waiting": (0x0, bits(1, 1, "unsigned long")),
        "Waking": (0x0, bits(2, 1, "unsigned long")), "MultipleShared": (0x0, bits(3, 1, "unsigned long")),
        "Shared": (0x0, bits(4, 28, "unsigned long")), "Value": (0x0, ULONG), "Ptr": (0x0, ptr()),
    }),
    "_EX_FAST_REF": record(0x4, {"Object": (0x0, ptr()), "RefCnt": (0x0, bits(0, 3, "unsigned long")),
                                 "Value": (0x0, ULONG)}),
    "_KSYSTEM_TIME": record(0xC, {"LowPart": (0x0, ULONG), "High1Time": (0x4, LONG), "High2Time": (0x8, LONG)}),
    "_KLDR_DATA_TABLE_ENTRY": record(0x5C, {
        "InLoadOrderLinks": (0x0, LIST_ENTRY), "ExceptionTable": (0x8, ptr()), "ExceptionTableSize": (0xC, ULONG),
        "DllBase": (0x18, ptr()), "EntryPoint": (0x1C, ptr()), "SizeOfImage": (0x20, ULONG),
        "FullDllName": (0x24, UNICODE_STRING), "BaseDllName": (0x2C, UNICODE_STRING), "Flags": (0x34, ULONG),
        "LoadCount": (0x38, USHORT), "CheckSum": (0x40, ULONG), "TimeDateStamp": (0x58, ULONG),
    }),
    # The loader list holds _KLDR_DATA_TABLE_ENTRY; Volatility also wants this one.
    "_LDR_DATA_TABLE_ENTRY": record(0xA8, {
        "InLoadOrderLinks": (0x0, LIST_ENTRY), "InMemoryOrderLinks": (0x8, LIST_ENTRY),
        "InInitializationOrderLinks": (0x10, LIST_ENTRY), "DllBase": (0x18, ptr()), "EntryPoint": (0x1C, ptr()),
        "SizeOfImage": (0x20, ULONG), "FullDllName": (0x24, UNICODE_STRING), "BaseDllName": (0x2C, UNICODE_STRING),
        "Flags": (0x34, ULONG), "TimeDateStamp": (0x44, ULONG),
    }),
    "_OBJECT_HEADER": record(0x20, {
        "PointerCount": (0x0, LONG), "HandleCount": (0x4, LONG), "Lock": (0x8, struct("_EX_PUSH_LOCK")),
        "TypeIndex": (0xC, UCHAR), "TraceFlags": (0xD, UCHAR), "InfoMask": (0xE, UCHAR), "Flags": (0xF, UCHAR),
        "ObjectCreateInfo": (0x10, ptr()), "QuotaBlockCharged": (0x10, ptr()), "SecurityDescriptor": (0x14, ptr()),
        "Body": (0x18, struct("_QUAD")),
    }),
    "_OBJECT_HEADER_NAME_INFO": record(0x10, {"Directory": (0x0, ptr("_OBJECT_DIRECTORY")),
                                              "Name": (0x4, UNICODE_STRING), "ReferenceCount": (0xC, LONG)}),
    "_OBJECT_HEADER_CREATOR_INFO": record(0x10, {"TypeList": (0x0, LIST_ENTRY), "CreatorUniqueProcess": (0x8, ptr()),
                                                 "CreatorBackTraceIndex": (0xC, USHORT), "Reserved1": (0xE, USHORT)}),
    "_OBJECT_HEADER_QUOTA_INFO": record(0x10, {"PagedPoolCharge": (0x0, ULONG), "NonPagedPoolCharge": (0x4, ULONG),
                                               "SecurityDescriptorCharge": (0x8, ULONG),
                                               "SecurityDescriptorQuotaBlock": (0xC, ptr())}),
    "_OBJECT_DIRECTORY": record(0xB0, {
        "HashBuckets": (0x0, array(37, ptr("_OBJECT_DIRECTORY_ENTRY"))), "Lock": (0x94, struct("_EX_PUSH_LOCK")),
        "DeviceMap": (0x98, ptr()), "ShadowDirectory": (0x9C, ptr("_OBJECT_DIRECTORY")), "Flags": (0xA8, ULONG),
        "SessionId": (0xAC, ULONG),
    }),
    "_OBJECT_DIRECTORY_ENTRY": record(0xC, {"ChainLink": (0x0, ptr("_OBJECT_DIRECTORY_ENTRY")),
                                            "Object": (0x4, ptr()), "HashValue": (0x8, ULONG)}),
    "_OBJECT_TYPE": record(0x90, {
        "TypeList": (0x0, LIST_ENTRY), "Name": (0x8, UNICODE_STRING), "DefaultObject": (0x10, ptr()),
        "Index": (0x14, UCHAR), "TotalNumberOfObjects": (0x18, ULONG), "TotalNumberOfHandles": (0x1C, ULONG),
        "HighWaterNumberOfObjects": (0x20, ULONG), "HighWaterNumberOfHandles": (0x24, ULONG),
        "TypeLock": (0x80, struct("_EX_PUSH_LOCK")), "Key": (0x84, ULONG), "CallbackList": (0x88, LIST_ENTRY),
    }),
    "_POOL_HEADER": record(0x8, {
        "PreviousSize": (0x0, bits(0, 9, "unsigned short")), "PoolIndex": (0x0, bits(9, 7, "unsigned short")),
        "BlockSize": (0x2, bits(0, 9, "unsigned short")), "PoolType": (0x2, bits(9, 7, "unsigned short")),
        "Ulong1": (0x0, ULONG), "PoolTag": (0x4, ULONG), "AllocatorBackTraceIndex": (0x4, USHORT),
        "PoolTagHash": (0x6, USHORT),
    }),
    "_POOL_TRACKER_BIG_PAGES": record(0x10, {
        "Va": (0x0, ULONG), "Key": (0x4, ULONG), "Pattern": (0x8, bits(0, 8, "unsigned long")),
        "PoolType": (0x8, bits(8, 12, "unsigned long")), "SlushSize": (0x8, bits(20, 12, "unsigned long")),
        "NumberOfBytes": (0xC, ULONG),
    }),
    "_KUSER_SHARED_DATA": record(0x720, {
        "SystemTime": (0x14, struct("_KSYSTEM_TIME")), "NtSystemRoot": (0x30, array(260, base("wchar"))),
        "NtBuildNumber": (0x260, ULONG), "NtProductType": (0x264, enum("_NT_PRODUCT_TYPE")),
        "ProductTypeIsValid": (0x268, UCHAR), "NtMajorVersion": (0x26C, ULONG), "NtMinorVersion": (0x270, ULONG),
        "KdDebuggerEnabled": (0x2D4, UCHAR),
    }),
    "_DRIVER_OBJECT": record(0xA8, {
        "Type": (0x0, base("short")), "Size": (0x2, base("short")), "DeviceObject": (0x4, ptr("_DEVICE_OBJECT")),
        "Flags": (0x8, ULONG), "DriverStart": (0xC, ptr()), "DriverSize": (0x10, ULONG), "DriverSection": (0x14, ptr()),
        "DriverExtension": (0x18, ptr()), "DriverName": (0x1C, UNICODE_STRING),
        "HardwareDatabase": (0x24, ptr("_UNICODE_STRING")), "FastIoDispatch": (0x28, ptr()), "DriverInit": (0x2C, ptr()),
        "DriverStartIo": (0x30, ptr()), "DriverUnload": (0x34, ptr()), "MajorFunction": (0x38, array(28, ptr())),
    }),
    "_DEVICE_OBJECT": record(0xB8, {
        "Type": (0x0, base("short")), "Size": (0x2, USHORT), "ReferenceCount": (0x4, LONG),
        "DriverObject": (0x8, ptr("_DRIVER_OBJECT")), "NextDevice": (0xC, ptr("_DEVICE_OBJECT")),
        "AttachedDevice": (0x10, ptr("_DEVICE_OBJECT")), "DeviceType": (0x2C, ULONG),
    }),
    "_IMAGE_DOS_HEADER": record(0x40, {
        "e_magic": (0x0, USHORT), "e_cblp": (0x2, USHORT), "e_cp": (0x4, USHORT), "e_crlc": (0x6, USHORT),
        "e_cparhdr": (0x8, USHORT), "e_minalloc": (0xA, USHORT), "e_maxalloc": (0xC, USHORT), "e_ss": (0xE, USHORT),
        "e_sp": (0x10, USHORT), "e_csum": (0x12, USHORT), "e_ip": (0x14, USHORT), "e_cs": (0x16, USHORT),
        "e_lfarlc": (0x18, USHORT), "e_ovno": (0x1A, USHORT), "e_res": (0x1C, array(4, USHORT)),
        "e_oemid": (0x24, USHORT), "e_oeminfo": (0x26, USHORT), "e_res2": (0x28, array(10, USHORT)),
        "e_lfanew": (0x3C, LONG),
    }),
    # The members of FORGED_FIELDS["_EPROCESS"] that this build has.
    "_EPROCESS": record(0x4C0, {
        "Pcb": (0x0, struct("_KPROCESS")), "UniqueProcessId": (0xE4, ptr()), "ActiveProcessLinks": (0xE8, LIST_ENTRY),
        "VdmObjects": (0xF4, ptr()), "PaeTop": (0x194, ptr()), "ImageFileName": (0x1AC, array(15, UCHAR)),
        "WnfContext": (0x39C, ptr()),
        "ProcessFirstResume": (0x3A8, bits(15, 1, F3)), "HighMemoryPriority": (0x3A8, bits(18, 1, F3)),
        "VmProcessorHost": (0x3A8, bits(23, 1, F3)), "VmProcessorHostTransition": (0x3A8, bits(24, 1, F3)),
        "TimerResolutionIgnore": (0x3A8, bits(26, 1, F3)),
    }),
    "_KPROCESS": record(0xE0, {"ProfileListHead": (0x10, LIST_ENTRY), "DirectoryTableBase": (0x18, ULONG),
                               "ThreadListHead": (0x2C, LIST_ENTRY)}),
    # Windows 8 and later have no _HANDLE_TABLE.HandleCount.
    "_HANDLE_TABLE": opaque(0x80),
    "_KPRCB": record(0x5F00, {"PendingTickFlags": (0x3D1, UCHAR)}),
    "_ETHREAD": opaque(0x4E0),
    "_KTHREAD": opaque(0x280),
    "_ERESOURCE": opaque(0x38),
    "_TOKEN": opaque(0x2A8),
    "_FILE_OBJECT": opaque(0x80),
    "_CM_KEY_BODY": opaque(0x34),
    "_CMHIVE": opaque(0xC00),
    "_CM_KEY_NODE": opaque(0x50),
    "_CM_KEY_VALUE": opaque(0x18),
    "_HMAP_ENTRY": opaque(0xC),
    "_MMVAD_SHORT": opaque(0x28),
    "_MMVAD": opaque(0x4C),
    "_KMUTANT": opaque(0x20),
    "_OBJECT_SYMBOLIC_LINK": opaque(0x20),
    "_CONTROL_AREA": opaque(0x50),
    "_SHARED_CACHE_MAP": opaque(0x188),
    "_VACB": opaque(0x18),
    "_KTIMER": opaque(0x28),
}
