"""SMMUv3 register offsets and in-memory structure layouts (Arm IHI 0070).

Names follow the architecture specification.  Bit positions are facts of
the architecture; the encoders here are what a driver (the kernel model)
uses, and the decoders what the hardware model uses.
"""

from __future__ import annotations

import enum

from .bits import Field

# --- MMIO registers (page 0; page 1 aliases it) ------------------------------
IDR0, IDR1, IDR2, IDR3, IDR4, IDR5 = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14
IIDR, AIDR = 0x18, 0x1C
CR0, CR0ACK, CR1, CR2 = 0x20, 0x24, 0x28, 0x2C
STATUSR, GBPA, AGBPA = 0x40, 0x44, 0x48
IRQ_CTRL, IRQ_CTRLACK = 0x50, 0x54
GERROR, GERRORN = 0x60, 0x64
GERROR_IRQ_CFG0, GERROR_IRQ_CFG1, GERROR_IRQ_CFG2 = 0x68, 0x70, 0x74
STRTAB_BASE, STRTAB_BASE_CFG = 0x80, 0x88
CMDQ_BASE, CMDQ_PROD, CMDQ_CONS = 0x90, 0x98, 0x9C
EVENTQ_BASE, EVENTQ_PROD, EVENTQ_CONS = 0xA0, 0xA8, 0xAC
EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1, EVENTQ_IRQ_CFG2 = 0xB0, 0xB8, 0xBC
PAGE1 = 0x10000
EVENTQ_PROD_PAGE1, EVENTQ_CONS_PAGE1 = PAGE1 + EVENTQ_PROD, PAGE1 + EVENTQ_CONS
MMIO_SIZE = 0x20000
REGS64 = (GERROR_IRQ_CFG0, STRTAB_BASE, CMDQ_BASE, EVENTQ_BASE, EVENTQ_IRQ_CFG0)

# IDR0
IDR0_S2P, IDR0_S1P, IDR0_TTF, IDR0_COHACC = Field(0), Field(1), Field(3, 2), Field(4)
IDR0_HTTU, IDR0_HYP, IDR0_ATS, IDR0_ASID16, IDR0_MSI = (Field(7, 6), Field(9), Field(10),
                                                        Field(12), Field(13))
IDR0_SEV, IDR0_PRI, IDR0_VMID16, IDR0_CD2L = Field(14), Field(16), Field(18), Field(19)
IDR0_TTENDIAN, IDR0_STALL_MODEL, IDR0_TERM_MODEL, IDR0_ST_LEVEL = (Field(22, 21), Field(25, 24),
                                                                   Field(26), Field(28, 27))
# IDR1
IDR1_SIDSIZE, IDR1_SSIDSIZE, IDR1_PRIQS = Field(5, 0), Field(10, 6), Field(15, 11)
IDR1_EVENTQS, IDR1_CMDQS = Field(20, 16), Field(25, 21)
# IDR3
IDR3_HAD, IDR3_RIL, IDR3_BBML = Field(2), Field(10), Field(12, 11)
# IDR5
IDR5_OAS, IDR5_GRAN4K, IDR5_GRAN16K, IDR5_GRAN64K = Field(2, 0), Field(4), Field(5), Field(6)
OAS_BITS = (32, 36, 40, 42, 44, 48, 52)          # encoding -> bits (IDR5.OAS, CD.IPS, S2PS)

CR0_SMMUEN, CR0_PRIQEN, CR0_EVENTQEN, CR0_CMDQEN, CR0_ATSCHK = (1 << 0, 1 << 1, 1 << 2, 1 << 3,
                                                                1 << 4)
CR0_MASK = 0x1F
GBPA_UPDATE, GBPA_ABORT = 1 << 31, 1 << 20
GBPA_MASK = 0x001F_3FFF | GBPA_ABORT          # every field below UPDATE
IRQ_CTRL_GERROR_IRQEN, IRQ_CTRL_PRIQ_IRQEN, IRQ_CTRL_EVENTQ_IRQEN = 1 << 0, 1 << 1, 1 << 2

GERROR_CMDQ_ERR, GERROR_EVTQ_ABT_ERR = 1 << 0, 1 << 2
GERROR_MSI_CMDQ_ABT_ERR, GERROR_MSI_EVTQ_ABT_ERR = 1 << 4, 1 << 5
GERROR_MSI_GERROR_ABT_ERR, GERROR_SFM_ERR = 1 << 7, 1 << 8
GERROR_MASK = 0x1FD

STRTAB_BASE_ADDR, STRTAB_BASE_RA = Field(51, 6), Field(62)
STRTAB_CFG_LOG2SIZE, STRTAB_CFG_SPLIT, STRTAB_CFG_FMT = Field(5, 0), Field(10, 6), Field(17, 16)
STRTAB_FMT_LINEAR, STRTAB_FMT_2LVL = 0, 1
Q_BASE_LOG2SIZE, Q_BASE_ADDR, Q_BASE_RWA = Field(4, 0), Field(51, 5), Field(62)
CMDQ_CONS_ERR = Field(30, 24)
CERROR_NONE, CERROR_ILL, CERROR_ABT, CERROR_ATC_INV_SYNC = 0, 1, 2, 3
Q_OVF = 1 << 31                                  # EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG
IRQ_CFG0_ADDR = Field(51, 2)

# --- level-1 descriptors ---------------------------------------------------
L1STD_SPAN, L1STD_L2PTR = Field(4, 0), Field(51, 6)
L1CD_V, L1CD_L2PTR = Field(0), Field(51, 12)

# --- STE (8 doublewords) ------------------------------------------------------
STE_SIZE = 64
STE0_V, STE0_CONFIG, STE0_S1FMT = Field(0), Field(3, 1), Field(5, 4)
STE0_S1CTXPTR, STE0_S1CDMAX = Field(51, 6), Field(63, 59)
STE1_S1DSS, STE1_S1CIR, STE1_S1COR, STE1_S1CSH = Field(1, 0), Field(3, 2), Field(5, 4), Field(7, 6)
STE1_S1STALLD, STE1_EATS, STE1_STRW, STE1_SHCFG = Field(27), Field(29, 28), Field(31, 30), \
    Field(45, 44)
STE2_S2VMID, STE2_S2T0SZ, STE2_S2SL0 = Field(15, 0), Field(37, 32), Field(39, 38)
STE2_S2IR0, STE2_S2OR0, STE2_S2SH0 = Field(41, 40), Field(43, 42), Field(45, 44)
STE2_S2TG, STE2_S2PS, STE2_S2AA64, STE2_S2ENDI = Field(47, 46), Field(50, 48), Field(51), \
    Field(52)
STE2_S2AFFD, STE2_S2PTW, STE2_S2HD, STE2_S2HA = Field(53), Field(54), Field(55), Field(56)
STE2_S2S, STE2_S2R = Field(57), Field(58)
STE3_S2TTB = Field(51, 4)


class SteConfig(enum.IntEnum):
    """STE.Config: which stages translate (0b001-0b011 are reserved)."""

    ABORT = 0b000
    BYPASS = 0b100
    S1 = 0b101
    S2 = 0b110
    NESTED = 0b111


S1DSS_TERMINATE, S1DSS_BYPASS, S1DSS_SSID0 = 0, 1, 2
EATS_ABT, EATS_TRANS, EATS_S1CHK = 0, 1, 2           # STE.EATS (0b11 reserved)

# The STE fields a guest owns in a nested (vSTE) configuration: what a VMM passes
# to IOMMU_HWPT_ALLOC as IOMMU_HWPT_DATA_ARM_SMMUV3 and what the host kernel
# accepts (Linux STRTAB_STE_{0,1}_NESTING_ALLOWED, QEMU smmuv3-accel STE{0,1}_MASK).
# Dword 0: V, Config, S1Fmt, S1ContextPtr, S1CDMax; dword 1: S1DSS, S1CIR, S1COR,
# S1CSH, S1STALLD, EATS (the host decides what EATS becomes in the physical STE).
STE0_NESTING_ALLOWED = (STE0_V.mask | STE0_CONFIG.mask | STE0_S1FMT.mask | STE0_S1CTXPTR.mask
                        | STE0_S1CDMAX.mask)
STE1_NESTING_ALLOWED = (STE1_S1DSS.mask | STE1_S1CIR.mask | STE1_S1COR.mask | STE1_S1CSH.mask
                        | STE1_S1STALLD.mask | STE1_EATS.mask)
S1FMT_LINEAR, S1FMT_4K_L2, S1FMT_64K_L2 = 0, 1, 2
TG_GRANULE = {0: 4096, 1: 65536, 2: 16384}          # TG0 and S2TG
TG1_GRANULE = {1: 16384, 2: 4096, 3: 65536}         # TG1 encodes differently
GRANULE_TG = {v: k for k, v in TG_GRANULE.items()}
GRANULE_TG1 = {v: k for k, v in TG1_GRANULE.items()}

# --- CD (8 doublewords) -------------------------------------------------------
CD_SIZE = 64
CD0_T0SZ, CD0_TG0, CD0_IR0, CD0_OR0, CD0_SH0 = (Field(5, 0), Field(7, 6), Field(9, 8),
                                                Field(11, 10), Field(13, 12))
CD0_EPD0, CD0_ENDI, CD0_T1SZ, CD0_TG1 = Field(14), Field(15), Field(21, 16), Field(23, 22)
CD0_EPD1, CD0_V, CD0_IPS, CD0_AFFD = Field(30), Field(31), Field(34, 32), Field(35)
CD0_TBI, CD0_AA64, CD0_HD, CD0_HA = Field(39, 38), Field(41), Field(42), Field(43)
CD0_S, CD0_R, CD0_A, CD0_ASET, CD0_ASID = Field(44), Field(45), Field(46), Field(47), \
    Field(63, 48)
CD1_HAD0, CD1_TTB0 = Field(1), Field(51, 4)
CD2_HAD1, CD2_TTB1 = Field(1), Field(51, 4)

# --- commands (2 doublewords) -------------------------------------------------
CMD_SIZE = 16
CMD_OP = Field(7, 0)
CMD_SSEC, CMD_SSV, CMD_SSID, CMD_SID = Field(10), Field(11), Field(31, 12), Field(63, 32)
CMD_LEAF = Field(0)                                # dword1
CMD_STE_RANGE = Field(4, 0)                        # dword1
CMD_TLBI_NUM, CMD_TLBI_SCALE = Field(16, 12), Field(24, 20)
CMD_TLBI_VMID, CMD_TLBI_ASID = Field(47, 32), Field(63, 48)
CMD_TLBI_TTL, CMD_TLBI_TG, CMD_TLBI_ADDR = Field(9, 8), Field(11, 10), Field(63, 12)
CMD_TLBI_IPA = Field(51, 12)
CMD_SYNC_CS, CMD_SYNC_MSH, CMD_SYNC_MSIATTR = Field(13, 12), Field(23, 22), Field(27, 24)
CMD_SYNC_MSIDATA, CMD_SYNC_MSIADDR = Field(63, 32), Field(51, 2)
SYNC_CS_NONE, SYNC_CS_IRQ, SYNC_CS_SEV = 0, 1, 2


class Opcode(enum.IntEnum):
    """Command opcodes (CMD_CFGI_ALL is CFGI_STE_RANGE with Range = 31)."""

    PREFETCH_CONFIG = 0x01
    PREFETCH_ADDR = 0x02
    CFGI_STE = 0x03
    CFGI_STE_RANGE = 0x04
    CFGI_CD = 0x05
    CFGI_CD_ALL = 0x06
    TLBI_NH_ALL = 0x10
    TLBI_NH_ASID = 0x11
    TLBI_NH_VA = 0x12
    TLBI_NH_VAA = 0x13
    TLBI_EL2_ALL = 0x20
    TLBI_EL2_ASID = 0x21
    TLBI_EL2_VA = 0x22
    TLBI_EL2_VAA = 0x23
    TLBI_S12_VMALL = 0x28
    TLBI_S2_IPA = 0x2A
    TLBI_NSNH_ALL = 0x30
    ATC_INV = 0x40
    PRI_RESP = 0x41
    RESUME = 0x44
    STALL_TERM = 0x45
    SYNC = 0x46


CFGI_ALL_RANGE = 31

# --- event records (4 doublewords) --------------------------------------------
EVT_SIZE = 32
EVT0_TYPE, EVT0_SSV, EVT0_SSID, EVT0_SID = Field(7, 0), Field(11), Field(31, 12), Field(63, 32)
EVT1_STAG, EVT1_STALL, EVT1_PNU, EVT1_IND = Field(15, 0), Field(31), Field(33), Field(34)
EVT1_RNW, EVT1_S2, EVT1_CLASS, EVT1_TTRNW = Field(35), Field(39), Field(41, 40), Field(44)
EVT3_IPA, EVT3_FETCH_ADDR = Field(51, 12), Field(51, 3)


class EventType(enum.IntEnum):
    """Event record types."""

    F_UUT = 0x01
    C_BAD_STREAMID = 0x02
    F_STE_FETCH = 0x03
    C_BAD_STE = 0x04
    F_BAD_ATS_TREQ = 0x05
    F_STREAM_DISABLED = 0x06
    F_TRANSL_FORBIDDEN = 0x07
    C_BAD_SUBSTREAMID = 0x08
    F_CD_FETCH = 0x09
    C_BAD_CD = 0x0A
    F_WALK_EABT = 0x0B
    F_TRANSLATION = 0x10
    F_ADDR_SIZE = 0x11
    F_ACCESS = 0x12
    F_PERMISSION = 0x13


class EventClass(enum.IntEnum):
    """Event CLASS: what the faulting access was for."""

    CD = 0
    TT = 1
    IN = 2
