"""The GICv3 / ITS formats, defined once: command words, the ITS model's table entries, the
command error codes and the INTID constants.

Shared by everything that encodes or decodes them: the ITS model (:mod:`pymsi.hw.its`,
which re-exports these names), the core's ITS paths (the C command queue and translation
cache, and their Python twins), the host kernel's ITS driver that builds commands, and
KVM's vITS that emulates them.  The C core reads the same definitions from
``csrc/gic_formats.h``, generated from this module by :func:`c_header` (a test checks the
file is current; regenerate it with ``python -m pymsi.core.gic_formats > csrc/gic_formats.h``).

Command fields are named ``C<n>_<FIELD>`` for doubleword n of the 32-byte command (GICv3
architecture specification, "ITS commands").  The table formats are IMPLEMENTATION DEFINED
and are this model's own: device and collection entries 8 bytes, vPE entries and ITEs 16.
"""

from __future__ import annotations

import enum

from .bits import Field

#: The first LPI INTID, and the INTID that means "none" (no interrupt pending; as an ITE's
#: or a vPE's doorbell: no doorbell).
LPI_BASE = 8192
SPURIOUS = 1023


class Cmd(enum.IntEnum):
    """ITS command opcodes (DW0 bits [7:0])."""

    MOVI = 0x01
    INT = 0x03
    CLEAR = 0x04
    SYNC = 0x05
    MAPD = 0x08
    MAPC = 0x09
    MAPTI = 0x0A
    MAPI = 0x0B
    INV = 0x0C
    INVALL = 0x0D
    MOVALL = 0x0E
    DISCARD = 0x0F
    VMOVI = 0x21
    VMOVP = 0x22
    VSYNC = 0x25
    VMAPP = 0x29
    VMAPTI = 0x2A
    VMAPI = 0x2B
    VINVALL = 0x2D


class ItsError(enum.IntEnum):
    """Command and translation errors (the architecture's E_ITS_* codes, plus ours)."""

    MOVI_UNMAPPED_INTERRUPT = 0x010107
    MOVI_UNMAPPED_COLLECTION = 0x010109
    INT_UNMAPPED_INTERRUPT = 0x010307
    CLEAR_UNMAPPED_INTERRUPT = 0x010507
    MAPD_DEVICE_OOR = 0x010801
    MAPD_ITTSIZE_OOR = 0x010802
    MAPC_PROCNUM_OOR = 0x010902
    MAPC_COLLECTION_OOR = 0x010903
    MAPTI_UNMAPPED_DEVICE = 0x010A04
    MAPTI_ID_OOR = 0x010A05
    MAPTI_PHYSICALID_OOR = 0x010A06
    INV_UNMAPPED_INTERRUPT = 0x010C07
    INVALL_UNMAPPED_COLLECTION = 0x010D09
    MOVALL_PROCNUM_OOR = 0x010E01
    DISCARD_UNMAPPED_INTERRUPT = 0x010F07
    # Not architecturally numbered: our own.
    UNKNOWN_COMMAND = 0x01FF00
    COLLECTION_OOR = 0x01FF01
    UNMAPPED_COLLECTION = 0x01FF02
    VPE_OOR = 0x01FF03
    UNMAPPED_VPE = 0x01FF04
    VIRTUAL_ID_OOR = 0x01FF05
    NOT_VIRTUAL = 0x01FF06
    PROCNUM_OOR = 0x01FF07
    NO_DEVICE_ID = 0x01FF08
    DISABLED = 0x01FF09


# The model's table entries (one field per name).
DTE_V = Field(0)                     # device entry: valid
DTE_SIZE = Field(5, 1)               # EventID bits - 1
DTE_ITT = Field(49, 6)               # ITT address >> 8
CTE_V = Field(0)                     # collection entry: valid
CTE_RDBASE = Field(16, 1)            # target processor number (GITS_TYPER.PTA = 0)
VPE0_V = Field(0)                    # vPE entry, doubleword 0: valid
VPE0_VPT_SIZE = Field(5, 1)          # vINTID bits - 1
VPE0_RDBASE = Field(21, 6)           # target processor number
ITE0_V = Field(0)                    # ITE doubleword 0: valid
ITE0_VIRTUAL = Field(1)              # maps a vLPI (VMAPTI / VMAPI)
ITE0_INTID = Field(63, 32)           # pINTID, or the vINTID of a virtual ITE
ITE1_ICID = Field(15, 0)             # ITE doubleword 1: collection
ITE1_VPEID = Field(31, 16)           # vPE of a virtual ITE
ITE1_DOORBELL = Field(63, 32)        # its doorbell pINTID (SPURIOUS: none)
ITE_SIZE = 16                        # bytes per ITE (GITS_TYPER.ITT_entry_size + 1)
DTE_SIZE_BYTES = CTE_SIZE_BYTES = 8
VPE_SIZE_BYTES = 16
# A level-1 entry of a two-level (indirect) table: Valid, and the level-2 page's address.
L1E_VALID = Field(63)
L1E_ADDR = Field(51, 0)              # the page's address (aligned to the table's page size)

# Command fields: C<doubleword>_<FIELD>.
C0_OP = Field(7, 0)
C0_DEVICEID = Field(63, 32)
C1_SIZE = Field(4, 0)                # MAPD: EventID bits - 1
C1_EVENTID = Field(31, 0)
C1_PINTID = Field(63, 32)            # MAPTI: the LPI
C1_VPEID = Field(47, 32)             # VMAPTI / VMOVI / VMAPP / VMOVP / VSYNC / VINVALL
C2_ICID = Field(15, 0)
C2_RDBASE = Field(47, 16)            # MAPC / SYNC / VMAPP / VMOVP: processor number
C2_V = Field(63)                     # MAPD / MAPC / VMAPP: valid
C2_ITT = Field(51, 8)                # MAPD: ITT address >> 8
C2_VINTID = Field(31, 0)             # VMAPTI
C2_DOORBELL = Field(63, 32)          # VMAPTI / VMOVI
C2_D = Field(0)                      # VMOVI: the doorbell field is valid
C3_RDBASE2 = Field(47, 16)           # MOVALL: the target processor
C3_VPT_SIZE = Field(4, 0)            # VMAPP
C3_VPT_ADDR = Field(51, 16)          # VMAPP: VPT address >> 16

#: What the C core includes from this module (besides the error codes and opcodes).
_C_FIELDS = ("DTE_V", "DTE_SIZE", "DTE_ITT", "CTE_V", "CTE_RDBASE", "ITE0_V", "ITE0_VIRTUAL",
             "ITE0_INTID", "ITE1_ICID", "ITE1_VPEID", "ITE1_DOORBELL", "L1E_VALID", "L1E_ADDR",
             "C0_OP", "C0_DEVICEID", "C1_SIZE", "C1_EVENTID", "C1_PINTID", "C2_ICID",
             "C2_RDBASE", "C2_V", "C2_ITT")


def c_header() -> str:
    """The text of ``csrc/gic_formats.h``: these definitions as C macros (a field as
    ``PYMSI_<NAME>_SHIFT`` and ``PYMSI_<NAME>_MASK``, the mask unshifted), read with
    ``PYMSI_GET(word, NAME)`` and built with ``PYMSI_PUT(NAME, value)``."""
    from . import common

    out = ["/* Generated from pymsi/core/gic_formats.py by c_header(): do not edit. */",
           "#ifndef PYMSI_GIC_FORMATS_H", "#define PYMSI_GIC_FORMATS_H", "",
           "#define PYMSI_GET(word, name) "
           "((uint64_t)(word) >> PYMSI_##name##_SHIFT & PYMSI_##name##_MASK)",
           "#define PYMSI_PUT(name, value) "
           "(((uint64_t)(value) & PYMSI_##name##_MASK) << PYMSI_##name##_SHIFT)", "",
           f"#define PYMSI_LPI_BASE {LPI_BASE}u", f"#define PYMSI_SPURIOUS {SPURIOUS}u",
           f"#define PYMSI_ITE_SIZE {ITE_SIZE}u", ""]
    for name in _C_FIELDS:
        f: Field = globals()[name]
        out.append(f"#define PYMSI_{name}_SHIFT {f.lo}")
        out.append(f"#define PYMSI_{name}_MASK UINT64_C({(1 << f.width) - 1:#x})")
    out.append("")
    out += [f"#define PYMSI_ITS_CMD_{c.name} {c.value:#04x}" for c in Cmd]
    out.append("")
    out += [f"#define PYMSI_ITS_E_{e.name} {e.value:#08x}" for e in ItsError]
    out.append("")
    out += [f"#define PYMSI_{n} {getattr(common, n)}" for n in sorted(dir(common))
            if n.startswith("ITSQ_")]
    out += ["", "#endif", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(c_header(), end="")
