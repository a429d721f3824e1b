"""The VMSAv8-64 translation table descriptor, defined once (Arm ARM, "VMSAv8-64 translation
table format descriptors"; the SMMUv3 walks the same tables).

Shared by the table builder (:mod:`pymsi.core.pgtable`, what an IOMMU driver writes), the
Python twin's walk and the C walk (``csrc/formats.h``, generated from this module by
:mod:`pymsi.core.cformats`).  One field per line; where stage 1 and stage 2 give the same
bits different meanings, both are named.
"""

from __future__ import annotations

from .bits import Field

DESC_VALID = Field(0)
DESC_TABLE = Field(1)          # levels 0-2: table (1) or block (0); level 3: page (must be 1)
# leaf attributes, stage 1
DESC_S1_ATTRINDX = Field(4, 2)     # MAIR index
DESC_S1_AP1 = Field(6)             # AP[1]: EL0 access
DESC_S1_AP2 = Field(7)             # AP[2]: read-only
DESC_S1_PXN = Field(53)
DESC_S1_UXN = Field(54)
# leaf attributes, stage 2
DESC_S2_MEMATTR = Field(5, 2)
DESC_S2AP_R = Field(6)             # S2AP[0]: reads allowed
DESC_S2AP_W = Field(7)             # S2AP[1]: writes allowed
DESC_S2_XN = Field(54, 53)
# leaf attributes, both stages
DESC_SH = Field(9, 8)              # shareability
DESC_AF = Field(10)                # access flag
DESC_NG = Field(11)                # stage 1: not global (ASID-tagged)
# table descriptor attributes (stage 1)
DESC_APTABLE_RO = Field(62)        # APTable[1]: no writes below
#: Output addresses are at most 48 bits (no 52-bit descriptors).
OA_LIMIT_BITS = 48
DESC_OA = Field(OA_LIMIT_BITS - 1, 0)  # the address bits (above the granule's offset bits)

#: What the C core includes (csrc/formats.h).
C_FIELDS = ("DESC_VALID", "DESC_TABLE", "DESC_S1_AP2", "DESC_S2AP_R", "DESC_S2AP_W",
            "DESC_AF", "DESC_NG", "DESC_APTABLE_RO", "DESC_OA")
C_CONSTANTS = ("OA_LIMIT_BITS",)
