"""Typed descriptions of what :mod:`pymsi.machine` builds, their dict forms and TOML.

* :class:`PciFunctionDesc` -- one PCI function: a plain function with MSI-X and/or MSI
  vectors, or a device model (``model = "nic"``) with its properties;
* :class:`BootOptions` -- how a host kernel boots on an :class:`~pymsi.machine.ArmVirt`;
* :class:`ArmVirtDesc`, :class:`X86PcDesc` -- the two host machines;
* :class:`VmDeviceDesc`, :class:`VirtualMachineDesc` -- the nested machine (host + VMM +
  guest) of :class:`~pymsi.machine.VirtualMachine`.

Every description is a frozen dataclass whose fields are documented and checked when it is
made: a bad value is :class:`~pymsi.errors.InvalidArgument` naming the field, the value and
what was expected.  Everything that takes a description also takes its dict form (the
TOML table, or the ``{"msix": 8}`` specs older code passes): ``Desc.from_dict`` converts it,
and an unknown key is an error naming the key and the accepted ones.  ``to_dict()`` gives
the dict form back (the keys that differ from the defaults).

:func:`load` reads a description from a TOML file and builds the machine (not booted);
:func:`to_toml` writes one.  The top-level key ``machine`` says which machine the file
describes: ``"arm-virt"``, ``"x86-pc"`` or ``"virtual"`` (the default)::

    machine = "arm-virt"
    ncpus = 4
    smmu = "nested"          # "s1" | "s2" | "nested" | "none"
    [boot]
    default_domain = "dma"   # "dma" | "identity"
    [[devices]]
    msix = 8
    [[devices]]
    model = "nic"            # a device model; its other keys are its properties
    queues = 16

(``examples/`` has one file of each kind.)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._doc import document_attributes
from .._repr import bounded
from ..errors import DeviceModelError, InvalidArgument

if TYPE_CHECKING:
    from .platforms import ArmVirt, X86Pc
    from .virtual import VirtualMachine

__all__ = [
    "MACHINE_KINDS",
    "MAX_MSIX",
    "MSI_DESIGNS",
    "ArmVirtDesc",
    "BootOptions",
    "MachineDesc",
    "PciFunctionDesc",
    "VirtualMachineDesc",
    "VmDeviceDesc",
    "X86PcDesc",
    "description_from_dict",
    "load",
    "load_description",
    "to_toml",
]

#: The MSI address designs (pymsi.kernel.iommufd_msi.MSI_DESIGNS, named here so that the
#: machine layer does not import the kernel to check the argument).
MSI_DESIGNS = ("dma-cookie", "sw-msi", "preset", "per-vector")
#: The most MSI-X vectors a function has (the table size field holds N - 1 in 11 bits).
MAX_MSIX = 2048
#: What the ``machine`` key of a TOML description names.
MACHINE_KINDS = ("arm-virt", "x86-pc", "virtual")

_D = TypeVar("_D", bound="_Desc")
_F = TypeVar("_F", bound="PciFunctionDesc")


# -- checks (each message names the field, the value and what was expected) ---------------

def _expected(name: str, value: Any, what: str) -> InvalidArgument:
    return InvalidArgument(f"{name} must be {what}, not {value!r}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _expected(name, value, f"an integer in [{lo:#x}, {hi:#x}]" if hi > 0xFFFF
                        else f"an integer in [{lo}, {hi}]")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _expected(name, value, "true or false")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        shown = " | ".join("none" if c is None else repr(c) for c in choices)
        raise _expected(name, value, f"one of {shown}")


def _check_pages(name: str, value: Any, lo: int, hi: int) -> None:
    _check_int(name, value, lo, hi)
    if value % 0x1000:
        raise _expected(name, value, "a whole number of 4 KiB pages")


def _msix_layout(msix: int | None) -> tuple[int, int]:
    """(PBA offset, smallest BAR) of a plain function's BAR 0: the table at 0, the PBA
    at 0x2000 as far as 512 vectors fit, else on the page after the table."""
    pba = max(0x2000, ((msix or 0) * 16 + 0xFFF) & ~0xFFF)
    size = 0x4000
    while size < pba + 0x1000:
        size <<= 1
    return pba, size


# -- the base: dict form, checks with the place named ---------------------------------------

class _Desc:
    """What every description shares: ``from_dict`` / ``to_dict`` / ``coerce``."""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys of the dict form (the fields, in order)."""
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[_D], d: object, where: str = "") -> _D:
        """The description of dict ``d``; an unknown key or a bad value is
        :class:`~pymsi.errors.InvalidArgument` naming it (prefixed with ``where``)."""
        if not isinstance(d, Mapping):
            raise InvalidArgument(f"{where or cls.__name__} must be a table of "
                                  f"{cls.__name__} keys, not {d!r}")
        try:
            return cls._from_mapping(dict(d))
        except InvalidArgument as e:
            if not where:
                raise
            head = str(e).split(" ", 1)[0].split(".", 1)[0].split("[", 1)[0].rstrip(":")
            named = head in cls.keys() or head in d
            raise type(e)(f"{where}.{e}" if named else f"{where}: {e}") from None

    @classmethod
    def _from_mapping(cls: type[_D], d: dict[str, Any]) -> _D:
        known = cls.keys()
        unknown = [key for key in d if key not in known]
        if unknown:
            raise InvalidArgument(f"unknown key{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(map(repr, unknown))} "
                                  f"(accepted: {', '.join(known)})")
        return cls(**d)

    @classmethod
    def coerce(cls: type[_D], value: Any, where: str = "") -> _D:
        """``value`` if it is a ``cls`` already, else ``cls.from_dict(value)``."""
        if isinstance(value, cls):
            return value
        return cls.from_dict(value, where)

    def to_dict(self, full: bool = False) -> dict[str, object]:
        """The dict form: the fields that differ from their defaults (all with ``full``);
        nested descriptions as dicts."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not full and value == _default(f):
                continue
            out[f.name] = _plain(value)
        return out


    def __repr__(self) -> str:
        """The fields that differ from their defaults, sizes and ids in hex, bounded."""
        items = ", ".join(f"{k}={_short(v)}" for k, v in self.to_dict().items())
        return bounded(f"{type(self).__name__}({items})")


def _short(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, dict, list)):
        return repr(value)
    if isinstance(value, int):
        return f"{value:#x}" if value >= 0x1000 else str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(_short(v) for v in value) + "]"


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _plain(value: Any) -> Any:
    if isinstance(value, _Desc):
        return value.to_dict()
    if isinstance(value, tuple) and value and isinstance(value[0], _Desc):
        return [v.to_dict() for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# -- one PCI function -----------------------------------------------------------------------

@document_attributes
@dataclass(frozen=True, repr=False)
class PciFunctionDesc(_Desc):
    """One PCI function on a machine's PCIe bus (one slot of bus 0, from slot 1 on).

    Either a plain function -- BAR 0 (32-bit memory) holds the MSI-X table at 0 and the PBA
    at 0x2000 (past the table when it is larger), Function Level Reset advertised -- or a
    device model (:mod:`pymsi.hw.qdev`): ``model`` names it and ``properties`` are its
    properties; a model declares its own identity, BARs and vectors, so the plain
    function's fields must be left at their defaults.

    Dict form: the field names; for a model, ``{"model": "nic", "queues": 16}`` (every key
    but ``model`` and ``function`` is a property).
    """

    #: MSI-X vectors, 1..2048 (None: no MSI-X capability)
    msix: int | None = None
    #: MSI vectors (Multiple Message Capable): 1, 2, 4, 8, 16 or 32 (None: no MSI
    #: capability)
    msi: int | None = None
    #: the MSI capability has per-vector masking
    msi_mask: bool = True
    #: Vendor ID (0xFFFF is "no function" and not accepted)
    vendor: int = 0x1AF4
    #: Device ID
    device: int = 0x1041
    #: BAR 0's size: a power of two large enough for the MSI-X table and PBA
    #: (None: the smallest of 16 KiB and up that holds them)
    bar_size: int | None = None
    #: the function number, 0..7
    function: int = 0
    #: the function advertises Function Level Reset (PCIe DevCap.FLR)
    flr: bool = True
    #: a device model's name ("edu", "nic", an entry point of ``pymsi.devices``, or
    #: "module:Class"); None: a plain function
    model: str | None = None
    #: the device model's properties (its ``PROPERTIES``; an unknown one is an error)
    properties: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "properties", MappingProxyType(dict(self.properties)))
        _check_int("function", self.function, 0, 7)
        if self.model is not None:
            self._check_model()
            return
        if self.properties:
            raise InvalidArgument(f"properties must be empty without a model, not "
                                  f"{dict(self.properties)!r}")
        if self.msix is not None:
            _check_int("msix", self.msix, 1, MAX_MSIX)
        if self.msi is not None:
            _check_choice("msi", self.msi, (1, 2, 4, 8, 16, 32))
        _check_bool("msi_mask", self.msi_mask)
        _check_bool("flr", self.flr)
        _check_int("vendor", self.vendor, 0, 0xFFFE)
        _check_int("device", self.device, 0, 0xFFFF)
        if self.bar_size is not None:
            need = _msix_layout(self.msix)[0] + 0x1000 if self.msix else 16
            _check_int("bar_size", self.bar_size, need, 1 << 31)
            if self.bar_size & (self.bar_size - 1):
                raise _expected("bar_size", self.bar_size, "a power of two")

    def _check_model(self) -> None:
        from ..hw.qdev import find_device_model

        if not isinstance(self.model, str):
            raise _expected("model", self.model, "a device model name")
        for f in fields(self):
            if f.name in _FUNCTION_KEYS and getattr(self, f.name) != f.default:
                raise InvalidArgument(f"{f.name}: device model {self.model!r} declares its "
                                      f"own (leave {f.name} out), not {getattr(self, f.name)!r}")
        try:
            cls = find_device_model(self.model)
        except DeviceModelError as e:
            raise DeviceModelError(f"model: {e}") from None
        known = cls.PROPERTIES
        for name in self.properties:
            if name not in known:
                raise InvalidArgument(f"unknown key {name!r}: model {self.model!r} has no such "
                                      f"property (properties: {', '.join(known) or 'none'})")
        try:
            _check_properties(cls, dict(self.properties))
        except InvalidArgument as e:
            # which property is at fault: the one whose default makes the model content
            bad = []
            for name in self.properties:
                try:
                    _check_properties(cls, {k: v for k, v in self.properties.items()
                                            if k != name})
                    bad.append(name)
                except InvalidArgument:
                    pass
            if len(bad) == 1:
                raise InvalidArgument(f"{bad[0]} must be a value model {self.model!r} "
                                      f"accepts, not {self.properties[bad[0]]!r} ({e})"
                                      ) from None
            raise InvalidArgument(f"model {self.model!r}: {e}") from None

    @classmethod
    def _from_mapping(cls: type[_D], d: dict[str, Any]) -> _D:
        if "model" in d:
            own = {k: d.pop(k) for k in list(d) if k in cls.keys() and
                   k not in _FUNCTION_KEYS and k != "properties"}
            if "properties" in d:
                raise InvalidArgument("unknown key 'properties' (a model's properties are "
                                      "keys of the device table)")
            # a model's class: it has ``properties``
            return cls(**own, properties=d)  # type: ignore[call-arg]
        return super()._from_mapping(d)

    def to_dict(self, full: bool = False) -> dict[str, object]:
        if self.model is None:
            out = super().to_dict(full)
            out.pop("properties", None)
            out.pop("model", None)
            return out
        out = {"model": self.model, **self.properties}
        for k, v in super().to_dict().items():     # function, emulated
            if k not in _FUNCTION_KEYS and k not in ("model", "properties"):
                out[k] = v
        if self.function or full:
            out["function"] = self.function
        return out

    def as_function(self) -> PciFunctionDesc:
        """This function alone (a subclass's own fields, like ``emulated``, dropped)."""
        if type(self) is PciFunctionDesc:
            return self
        return PciFunctionDesc(**{f.name: getattr(self, f.name)
                                  for f in fields(PciFunctionDesc)})

    def pba_offset(self) -> int:
        """Where a plain function's PBA is in BAR 0."""
        return _msix_layout(self.msix)[0]

    def bar0_size(self) -> int:
        """A plain function's BAR 0 size (``bar_size`` or the default for its table)."""
        return self.bar_size if self.bar_size is not None else _msix_layout(self.msix)[1]


def _check_properties(cls: Any, props: dict[str, Any]) -> None:
    """The model's check_properties() on these values (the others at their defaults),
    without building the model."""
    probe = cls.__new__(cls)
    for name, default in cls.PROPERTIES.items():
        setattr(probe, name, props.get(name, default))
    probe.check_properties()


#: the plain function's own fields (a device model declares these itself)
_FUNCTION_KEYS = ("msix", "msi", "msi_mask", "vendor", "device", "bar_size", "flr")


def _devices(value: Any, cls: type[_F], limit: int = 31) -> tuple[_F, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise _expected("devices", value, "a list of device tables")
    out: list[_F] = []
    for i, d in enumerate(value):
        desc = cls.coerce(d, f"devices[{i}]")
        out.append(cast(_F, desc.as_function()) if cls is PciFunctionDesc else desc)
    if len(out) > limit:
        raise InvalidArgument(f"devices: at most {limit} (one PCI slot each on bus 0), "
                              f"not {len(out)}")
    return tuple(out)


# -- host machines ------------------------------------------------------------------------

@document_attributes
@dataclass(frozen=True, repr=False)
class BootOptions(_Desc):
    """How a host kernel boots on an :class:`~pymsi.machine.ArmVirt`
    (:meth:`~pymsi.machine.ArmVirt.boot` takes the same as keyword arguments)."""

    #: the default domain type of IOMMU groups: "dma" (translated by dma-iommu, Linux's
    #: default) or "identity" (iommu.passthrough=1); None: "dma"
    default_domain: str | None = None

    def __post_init__(self) -> None:
        dd = getattr(self.default_domain, "value", self.default_domain)   # a DomainType
        object.__setattr__(self, "default_domain", dd)
        if dd is not None:
            _check_choice("default_domain", dd, ("dma", "identity"))


@document_attributes
@dataclass(frozen=True, repr=False)
class ArmVirtDesc(_Desc):
    """QEMU's arm64 "virt" board (:class:`~pymsi.machine.ArmVirt`): GICv3 (or v4) + ITS,
    an SMMUv3 whose ID-register choices default to what QEMU's virt SMMUv3 advertises,
    a PCIe host with ``devices`` on bus 0 from slot 1."""

    #: CPUs (each with its redistributor), 1..256
    ncpus: int = 4
    #: RAM at 0x40000000, in bytes: whole 4 KiB pages, at least 32 MiB (the kernel
    #: allocates from all but the first 16 MiB)
    ram_size: int = 0x2000_0000
    #: the GIC is a GICv4 (direct injection of virtual LPIs)
    gicv4: bool = False
    #: the SMMU's stages: "s1", "s2", "nested"; None (TOML: "none"): no SMMU
    smmu: str | None = "s1"
    #: the PCI functions, bus 0 from slot 1 (at most 31)
    devices: tuple[PciFunctionDesc, ...] = ()
    #: the core backend, "c" or "python" (None: PYMSI_BACKEND, else C when built)
    backend: str | None = None
    #: SMMU output address size in bits (IDR5.OAS): 32, 36, 40, 42, 44, 48
    oas: int = 44
    #: SMMU StreamID bits (IDR1.SIDSIZE), 1..32
    sidsize: int = 16
    #: SMMU SubstreamID bits (IDR1.SSIDSIZE), 0..20
    ssidsize: int = 0
    #: log2 of the command queue's largest size (IDR1.CMDQS), 0..19
    cmdqs: int = 19
    #: log2 of the event queue's largest size (IDR1.EVENTQS), 0..19
    eventqs: int = 19
    #: translation granules the SMMU supports (IDR5.GRAN4K/16K/64K): a non-empty subset
    #: of 4096, 16384, 65536
    granules: tuple[int, ...] = (4096, 16384, 65536)
    #: range invalidation (IDR3.RIL)
    ril: bool = True
    #: hierarchical attribute disable (IDR0.HTTU's neighbour IDR3.HAD)
    had: bool = True
    #: the SMMU signals with MSIs (IDR0.MSI) rather than wired interrupts
    msi: bool = False
    #: IDR0.SEV (event queue WFE wake-up), advertised only
    sev: bool = False
    #: 2-level stream tables (IDR0.ST_LEVEL)
    two_level: bool = True
    #: 2-level context descriptor tables (IDR0.CD2L), advertised only
    cd2l: bool = False
    #: the MSI address design of a booted kernel's iommufd contexts
    msi_design: str = "per-vector"
    #: how :meth:`~pymsi.machine.ArmVirt.boot` boots a kernel by default
    boot: BootOptions = field(default_factory=BootOptions)

    def __post_init__(self) -> None:
        _check_machine_common(self, 256)
        _check_bool("gicv4", self.gicv4)
        smmu = None if self.smmu in ("none", "") else self.smmu
        object.__setattr__(self, "smmu", smmu)
        _check_choice("smmu", smmu, ("s1", "s2", "nested", None))
        _check_choice("oas", self.oas, (32, 36, 40, 42, 44, 48))
        _check_int("sidsize", self.sidsize, 1, 32)
        _check_int("ssidsize", self.ssidsize, 0, 20)
        _check_int("cmdqs", self.cmdqs, 0, 19)
        _check_int("eventqs", self.eventqs, 0, 19)
        g = self.granules
        if isinstance(g, (str, bytes, Mapping)) or not hasattr(g, "__iter__"):
            raise _expected("granules", g, "a list of 4096, 16384, 65536")
        g = tuple(g)
        if not g or any(isinstance(x, bool) or x not in (4096, 16384, 65536) for x in g) \
                or len(set(g)) != len(g):
            raise _expected("granules", list(g), "a non-empty list of distinct 4096, "
                            "16384, 65536")
        object.__setattr__(self, "granules", g)
        for name in ("ril", "had", "msi", "sev", "two_level", "cd2l"):
            _check_bool(name, getattr(self, name))
        object.__setattr__(self, "boot", BootOptions.coerce(self.boot, "boot"))


@document_attributes
@dataclass(frozen=True, repr=False)
class X86PcDesc(_Desc):
    """A PC (:class:`~pymsi.machine.X86Pc`): RAM, the 0xFEE00000 interrupt message window
    with local APICs, an Intel-style interrupt remapping unit, PCIe with ``devices``."""

    #: CPUs (local APICs; the MSI destination ID is 8 bits), 1..255
    ncpus: int = 4
    #: RAM at 0x100000, in bytes: whole 4 KiB pages, at least 32 MiB
    ram_size: int = 0x1000_0000
    #: the kernel turns interrupt remapping on (IRTEs; IR-PCI-MSI)
    remapping: bool = False
    #: the PCI functions, bus 0 from slot 1 (at most 31)
    devices: tuple[PciFunctionDesc, ...] = ()
    #: the core backend, "c" or "python" (None: PYMSI_BACKEND, else C when built)
    backend: str | None = None
    #: the MSI address design of a booted kernel's iommufd contexts
    msi_design: str = "per-vector"

    def __post_init__(self) -> None:
        _check_machine_common(self, 255)
        _check_bool("remapping", self.remapping)


def _check_machine_common(d: ArmVirtDesc | X86PcDesc, maxcpus: int) -> None:
    _check_int("ncpus", d.ncpus, 1, maxcpus)
    _check_pages("ram_size", d.ram_size, 0x200_0000, 1 << 40)
    _check_choice("backend", d.backend, ("c", "python", None))
    _check_choice("msi_design", d.msi_design, MSI_DESIGNS)
    object.__setattr__(d, "devices", _devices(d.devices, PciFunctionDesc))


# -- the nested machine ----------------------------------------------------------------------

@document_attributes
@dataclass(frozen=True, repr=False)
class VmDeviceDesc(PciFunctionDesc):
    """A device of a :class:`VirtualMachineDesc`: a PCI function (assigned to the VM from
    the host through vfio-pci, or emulated by the VMM).  With neither ``msix``, ``msi``
    nor ``model`` it has 8 MSI-X vectors."""

    #: the VMM emulates the device on the guest's bus (QEMU ``-device``) instead of the
    #: host's physical function being assigned
    emulated: bool = False

    def __post_init__(self) -> None:
        if self.model is None and self.msix is None and self.msi is None:
            object.__setattr__(self, "msix", 8)
        super().__post_init__()
        _check_bool("emulated", self.emulated)


@document_attributes
@dataclass(frozen=True, repr=False)
class VirtualMachineDesc(_Desc):
    """Host + VMM + guest (:class:`~pymsi.machine.VirtualMachine`)."""

    #: the guest's vSMMU: "accel" (smmuv3-accel: nested on the host SMMU), "emulated"
    #: (the VMM's shadow), None (TOML: "none"): the guest has no IOMMU
    vsmmu: str | None = None
    #: the host GIC is a GICv4 (vLPIs injected directly)
    gicv4: bool = False
    #: the MSI address design ("dma-cookie", "sw-msi", "preset", "per-vector")
    variant: str = "per-vector"
    #: the devices, slot 1 on of the guest's bus (None: one with 8 MSI-X vectors); at
    #: most 31
    devices: tuple[VmDeviceDesc, ...] | None = None
    #: host CPUs, 1..256
    ncpus: int = 4
    #: vCPUs, 1..256
    guest_ncpus: int = 2
    #: host RAM in bytes (whole pages, 32 MiB..1 TiB)
    host_ram: int = 0x2000_0000
    #: guest RAM in bytes (whole pages, 4 MiB..1 GiB)
    guest_ram: int = 0x200_0000
    #: the guest kernel identity-maps the IORT RMR (Linux 6.0+); False: a kernel without
    #: RMR support
    honour_rmr: bool = True
    #: the core backend, "c" or "python" (None: PYMSI_BACKEND, else C when built)
    backend: str | None = None
    #: the scheduler's seed (one seed, one run), 0..2**64-1
    seed: int = 0

    def __post_init__(self) -> None:
        vsmmu = None if self.vsmmu in ("none", "") else self.vsmmu
        object.__setattr__(self, "vsmmu", vsmmu)
        _check_choice("vsmmu", vsmmu, ("accel", "emulated", None))
        _check_choice("variant", self.variant, MSI_DESIGNS)
        _check_bool("gicv4", self.gicv4)
        _check_bool("honour_rmr", self.honour_rmr)
        _check_int("ncpus", self.ncpus, 1, 256)
        _check_int("guest_ncpus", self.guest_ncpus, 1, 256)
        _check_pages("host_ram", self.host_ram, 0x200_0000, 1 << 40)
        _check_pages("guest_ram", self.guest_ram, 0x40_0000, 0x4000_0000)
        _check_int("seed", self.seed, 0, (1 << 64) - 1)
        _check_choice("backend", self.backend, ("c", "python", None))
        devices = (VmDeviceDesc(),) if self.devices is None else \
            _devices(self.devices, VmDeviceDesc)
        object.__setattr__(self, "devices", devices)
        for i, d in enumerate(devices):
            if vsmmu == "accel" and d.emulated:          # QEMU: smmuv3-accel refuses them
                raise InvalidArgument(f"devices[{i}].emulated: an emulated device cannot sit "
                                      "behind an accelerated vSMMU (vsmmu='accel')")
            if vsmmu == "emulated" and not d.emulated:
                raise InvalidArgument(
                    f"devices[{i}]: an assigned device cannot sit behind an emulated vSMMU "
                    "(SMMUv3 does not support notification on MAP); use vsmmu='accel' or "
                    "emulated = true")
        if vsmmu == "accel" and not devices:
            raise InvalidArgument("devices: vsmmu='accel' needs an assigned device (its "
                                  "nest parent is allocated with the first)")


#: Any machine description.
MachineDesc = ArmVirtDesc | X86PcDesc | VirtualMachineDesc
_KINDS: dict[str, type[Any]] = {"arm-virt": ArmVirtDesc, "x86-pc": X86PcDesc,
                                "virtual": VirtualMachineDesc}


def description_from_dict(d: object) -> MachineDesc:
    """The machine description of a TOML table: its ``machine`` key ("arm-virt",
    "x86-pc", "virtual"; absent: "virtual") picks the type, the rest are its keys."""
    if not isinstance(d, Mapping):
        raise _expected("a machine description", d, "a table")
    d = dict(d)
    kind = d.pop("machine", "virtual")
    _check_choice("machine", kind, MACHINE_KINDS)
    desc: MachineDesc = _KINDS[kind].from_dict(d)
    return desc


# -- TOML -----------------------------------------------------------------------------------

def load_description(path: str) -> MachineDesc:
    """The machine description in TOML file ``path``; bad TOML, an unknown key or a bad
    value is :class:`~pymsi.errors.InvalidArgument` naming the file and the key."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:                                          # Python 3.10: the backport
        import tomli as tomllib
    path = str(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{path}: {e}") from None
    try:
        return description_from_dict(table)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e}") from None


def load(path: str) -> ArmVirt | X86Pc | VirtualMachine:
    """The machine a TOML file describes, built and not booted: an
    :class:`~pymsi.machine.ArmVirt` / :class:`~pymsi.machine.X86Pc` (``machine =
    "arm-virt"`` / ``"x86-pc"``; ``.boot()`` boots its kernel with the file's ``[boot]``
    options) or a :class:`~pymsi.machine.VirtualMachine` (no ``machine`` key, or
    ``"virtual"``; ``.boot()`` boots host, VMM and guest).  Errors as
    :func:`load_description`."""
    from .platforms import ArmVirt, X86Pc
    from .virtual import VirtualMachine

    desc = load_description(path)
    if isinstance(desc, VirtualMachineDesc):
        return VirtualMachine(desc)
    if isinstance(desc, ArmVirtDesc):
        return ArmVirt.from_description(desc)
    return X86Pc.from_description(desc)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:#x}" if v >= 0x10000 else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return json.dumps(v)                 # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise InvalidArgument(f"{v!r} has no TOML form")


def to_toml(desc: MachineDesc) -> str:
    """``desc`` as TOML text that :func:`load` reads back to the same description (the
    keys that differ from the defaults; None is written "none" where it differs)."""
    kind = next(k for k, t in _KINDS.items() if type(desc) is t)
    d = desc.to_dict()
    lines = [f'machine = "{kind}"']
    tables: list[str] = []
    for key, value in d.items():
        if value is None:
            if key in ("smmu", "vsmmu"):
                lines.append(f'{key} = "none"')
            continue                          # backend / default_domain: the default
        if key == "devices" and not value:
            lines.append("devices = []")
        elif key == "devices":
            for dev in cast("list[dict[str, object]]", value):    # (_plain: a list)
                tables += ["", "[[devices]]"]
                tables += [f"{json.dumps(k) if not k.isidentifier() else k} = "
                           f"{_toml_value(x)}" for k, x in dev.items()]
        elif isinstance(value, Mapping):
            tables += ["", f"[{key}]"] + [f"{k} = {_toml_value(x)}"
                                         for k, x in value.items() if x is not None]
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"
