"""A whole nested machine from a short description: host + VMM + guest.

:class:`VirtualMachine` assembles, in ``boot()``:

1. the host: an Arm virt board (:class:`~pymsi.machine.ArmVirt`, SMMUv3 with
   nesting, GICv3 or GICv4) with the physical PCI functions to assign, and the
   host kernel booted on it with ``variant`` as its MSI address design;
2. the VMM (:class:`~pymsi.vmm.vmm.Vmm`): iommufd + IOAS, guest RAM, the KVM VM
   with its vGIC and vITS, the vSMMU (``vsmmu``), the guest's virtual PCI
   functions -- each assigned device through vfio-pci, each ``emulated`` one a
   VMM device model on the guest's bus;
3. the guest: the same kernel model booted on the VMM's board, with a test
   driver (:mod:`pymsi.kernel.pci_endpoint_test`) bound to every device and a
   handler on every vector recording (vector, vCPU).

``run()`` lets everything settle: posted writes on both buses, the host's
interrupts (VFIO's handlers signalling eventfds -> KVM), the guest's.

The description is a :class:`~pymsi.machine.desc.VirtualMachineDesc`; the same loads
from TOML (:func:`pymsi.machine.load`); an unknown key or a bad value is
:class:`~pymsi.errors.InvalidArgument` (a ValueError) naming it::

    vsmmu = "accel"          # "accel" | "emulated" | "none"
    gicv4 = false
    variant = "per-vector"   # dma-cookie | sw-msi | preset | per-vector
    [[devices]]
    msix = 8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypedDict, cast

from .._doc import document_attributes
from .._repr import bounded, short
from ..errors import InvalidArgument, NotQuiescent, OutOfOrder
from ..hw.qdev import PciDeviceModel
from ..kernel.iommufd_viommu import Veventq
from ..sched import Scheduler
from .desc import VirtualMachineDesc, VmDeviceDesc
from .desc import load as load
from .platforms import ArmVirt, make_function, plug_function

if TYPE_CHECKING:
    from ..hw.pci import PciFunction
    from ..kernel.pci import PciDev
    from ..kernel.pci_endpoint_test import EndpointTest
    from ..vmm.smmuv3 import VirtualSmmuV3

VSMMU_MODES = ("accel", "emulated", None)

#: Top-level keys of a description, with their defaults (:class:`VirtualMachineDesc`).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(VirtualMachineDesc)}
#: Keys of one device description (:class:`VmDeviceDesc`; a device model's other keys
#: are its properties).
DEVICE_KEYS = VmDeviceDesc.keys()


# what the idle pass knows of a hook (VirtualMachine._idle_pass)
_OTHER, _BUS, _HOST_IRQ, _GUEST_IRQ, _VEVENTQ, _VFIO = range(6)


class VirtualMachineDict(TypedDict):
    """A :class:`VirtualMachineDesc` as a dict, every key present (the fields' documentation
    is theirs): what :func:`check_description` returns and ``VirtualMachine.desc`` is."""

    vsmmu: str | None
    gicv4: bool
    variant: str
    #: each device's description in dict form (the keys that differ from the defaults)
    devices: list[dict[str, object]]
    ncpus: int
    guest_ncpus: int
    host_ram: int
    guest_ram: int
    honour_rmr: bool
    backend: str | None
    seed: int


def check_description(desc: object) -> VirtualMachineDict:
    """``desc`` with defaults filled in and every value checked
    (:class:`~pymsi.errors.InvalidArgument`, a ValueError, naming the first unknown key or
    bad value): :meth:`VirtualMachineDesc.from_dict` as a dict."""
    return _as_dict(VirtualMachineDesc.from_dict(desc))


def _as_dict(d: VirtualMachineDesc) -> VirtualMachineDict:
    out = d.to_dict(full=True)
    out["devices"] = [dev.to_dict() for dev in d.devices or ()]
    return cast(VirtualMachineDict, out)       # every field (full), devices as dicts


@document_attributes
@dataclass(eq=False)
class DeviceSlot:
    """One described device, end to end."""

    #: its index in the description's ``devices``
    index: int
    #: its description in dict form (the keys that differ from the defaults)
    spec: dict[str, Any]
    #: the VMM emulates it (else the host's physical function is assigned)
    emulated: bool
    #: its description
    description: VmDeviceDesc | None = None
    host_fn: PciFunction | None = None   # the physical function (assigned devices)
    guest_fn: PciFunction | None = None  # the function on the guest's bus (model / vfio-pci)
    guest_pdev: PciDev | None = None     # the guest kernel's pci_dev
    test: EndpointTest | None = None     # the guest driver's record of its interrupts
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return bounded(f"DeviceSlot({self.index}, emulated={self.emulated}, "
                       f"host={short(self.host_fn)}, guest={short(self.guest_fn)})")


@document_attributes
class VirtualMachine:
    """Host + VMM + guest from a short description: a
    :class:`~pymsi.machine.desc.VirtualMachineDesc` (whose fields document the keys) or
    its keys as keyword arguments, ``VirtualMachine(vsmmu="accel", devices=[{"msix":
    8}])``; an unknown key or bad value is :class:`~pymsi.errors.InvalidArgument` naming it.

    After :meth:`boot`: ``host`` (the host kernel), ``machine`` (the host board),
    ``vmm``, ``guest`` (the guest kernel), ``board`` (the guest's board),
    ``slots`` (one :class:`DeviceSlot` per described device).
    """

    #: the description, checked
    description: VirtualMachineDesc
    #: the description as a dict (every key, defaults filled in)
    desc: VirtualMachineDict

    def __init__(self, description: VirtualMachineDesc | Mapping[str, object] | None = None,
                 /, **desc: object) -> None:
        if description is not None and desc:
            raise TypeError("VirtualMachine() takes a description or keyword arguments, "
                            "not both")
        d = VirtualMachineDesc.coerce(desc if description is None else description)
        self.description = d
        self.desc = _as_dict(d)
        self.vsmmu: str | None = d.vsmmu
        self.gicv4: bool = d.gicv4
        self.variant: str = d.variant
        self.slots = [DeviceSlot(i, dev.to_dict(), dev.emulated, dev)
                      for i, dev in enumerate(d.devices or ())]
        self.machine: ArmVirt | None = None
        self.host: Any = None
        self.vmm: Any = None
        self.board: Any = None
        self.guest: Any = None
        self.driver: Any = None
        self._hooks: list[tuple[str, Any]] = []
        self.booted = False
        self.guest_handled = 0
        #: the machine's clock and event queue (device models schedule on it)
        self.sched = Scheduler(self.desc["seed"])

    # -- assembly ------------------------------------------------------------------------

    def boot(self) -> VirtualMachine:
        """Host, VMM, guest (see the module doc); returns self."""
        from ..kernel.boot import boot_arm
        from ..kernel.pci_endpoint_test import PciEndpointTestDriver
        from ..vmm.vmm import Vmm

        if self.booted:
            raise OutOfOrder("the machine is already booted")
        d = self.desc
        assigned = [s for s in self.slots if not s.emulated]
        self.machine = ArmVirt(ncpus=d["ncpus"], ram_size=d["host_ram"], gicv4=self.gicv4,
                               # every slot's description is set by __init__
                               smmu="nested", devices=[s.description.as_function()  # type: ignore[union-attr]
                                                          for s in assigned],
                               backend=d["backend"], msi_design=self.variant)
        for s, fn in zip(assigned, self.machine.functions, strict=True):
            s.host_fn = fn
        self.host = host = self.machine.boot()
        for n, (s, fn) in enumerate(zip(assigned, self.machine.functions, strict=True)):
            # the administrator hands them to vfio-pci
            bdf = next(p.bdf for p in host.pci.devices if p.rid == fn.rid)
            host.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
            host.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", bdf)
            s.extra["cdev"] = f"/dev/vfio/devices/vfio{n}"
        self.vmm = Vmm(host, self.machine.ram, ncpus=d["guest_ncpus"],
                       ram_size=d["guest_ram"], msi_design=self.variant,
                       honour_rmr=d["honour_rmr"], kernel=boot_arm)
        self.board = self.vmm.realize()
        if self.vsmmu == "emulated":
            self.board.attach_smmu(self._vsmmu("emulated"), emulated=True)
        for s in self.slots:
            slot = s.index + 1
            if s.emulated:
                spec = s.description.as_function()  # type: ignore[union-attr]  # as above
                s.guest_fn = plug_function(self.board.pci, make_function(0, slot, spec))
            else:                                  # -device vfio-pci,host=...
                s.guest_fn = self.vmm.vfio_realize(
                    s.extra["cdev"], slot, self.vmm.ioas_id if self.vsmmu is None else None)
        if self.vsmmu == "accel":
            self._accel_vsmmu([s.guest_fn for s in assigned])
        self.guest = self.vmm.boot_guest()
        by_rid = {p.rid: p for p in self.guest.pci.devices}
        for s in self.slots:
            s.guest_pdev = by_rid.get(cast("PciFunction", s.guest_fn).rid)   # set above
        self.driver = PciEndpointTestDriver(self.guest).register()
        for s in self.slots:
            s.test = self.driver.tests.get(s.guest_pdev)
            for f in (s.host_fn, s.guest_fn):
                if isinstance(f, PciDeviceModel):
                    f.scheduler = self.sched
        self._hooks = self._idle_hooks()
        self._prepare_idle()
        self.sched.add_idle_hook(self._idle_pass, "machine")
        self.booted = True
        return self

    #: skip an idle hook that cannot have work (doing what its call would have done: the
    #: spurious acknowledges it counts); False: call every hook every pass
    fast_idle = True

    def _prepare_idle(self) -> None:
        """What :meth:`_idle_pass` needs to tell an idle hook from one with work."""
        from ..hw.gicv3 import CpuInterface
        from ..kernel.kvm import VgicCpuIf
        from ..vmm.smmuv3 import VirtualSmmuV3
        from ..vmm.vfio_pci import VfioPciDevice

        host, guest = self.host, self.guest
        hgic, ggic = getattr(host, "gic", None), getattr(guest, "gic", None)
        # the host's CPUs: gic_handle_irq over the physical CPU interfaces
        self._host_cpus = None
        if hgic is not None and host.cpu_irq == hgic.handle_irq and all(
                type(c) is CpuInterface for c in hgic.cpuifs):
            self._host_cpus = (host, hgic.cpuifs)
        # the guest's vCPUs: gic_handle_irq over KVM's vCPU interfaces of one VM
        self._guest_cpus = None
        if ggic is not None and guest.cpu_irq == ggic.handle_irq and ggic.cpuifs and all(
                type(c) is VgicCpuIf for c in ggic.cpuifs):
            kvms = {id(c.vcpu.kvm) for c in ggic.cpuifs}
            if len(kvms) == 1:
                self._guest_cpus = (guest, ggic.cpuifs, ggic.cpuifs[0].vcpu.kvm)
        self._idle_cache: tuple[Any, ...] = (None, (), ())
        plan: list[tuple[int, Any, Any]] = []
        for name, hook in self._hooks:
            kind, obj = _OTHER, None
            if name in ("host bus", "guest bus"):
                kind, obj = _BUS, hook.__self__
            elif name == "host interrupts" and self._host_cpus is not None:
                kind, obj = _HOST_IRQ, host
            elif name == "guest interrupts" and self._guest_cpus is not None:
                kind, obj = _GUEST_IRQ, self._guest_cpus
            elif name == "vSMMU vEVENTQ" and type(hook.__self__) is VirtualSmmuV3:
                # an accelerated vSMMU always has its host iommufd (VirtualSmmuV3 checks)
                kind, obj = _VEVENTQ, (hook.__self__,
                                       hook.__self__.host.k.files.fds)  # type: ignore[union-attr]
            elif name.startswith("vfio-pci ") and type(hook.__self__) is VfioPciDevice:
                kind, obj = _VFIO, hook.__self__
            plan.append((kind, hook, obj))
        self._idle_plan = plan

    def _host_cpu_cache(self, online: frozenset[int]) -> tuple[Any, ...]:
        """(``online``, the CPU interfaces of the online host CPUs, their redistributors)."""
        _, cpuifs = self._host_cpus  # type: ignore[misc]
        cifs = tuple(cpuifs[i] for i in sorted(online))
        self._idle_cache = (online, cifs, tuple(c.gic.redists[c.cpu] for c in cifs))
        return self._idle_cache

    def _idle_pass(self) -> int:
        """The idle hooks of :meth:`_idle_hooks`, in their order, as one scheduler hook
        (how many did work).  A hook that cannot have work is not called when
        :attr:`fast_idle` is on: a bus with no posted write (its drain does nothing), the
        host's CPUs with nothing pending at their redistributors and the guest's vCPUs
        with no LPI pending in KVM and none in their resident vPE's table (each
        acknowledge would read 1023 and count one spurious read, loading VPMR with a
        vPE, which is what is done instead: ``VgicCpuIf.idle_ack``), a vEVENTQ with no event
        queued, a VFIO device with no eventfd of the VMM's own; every other hook is
        called.  None of the calls skipped fires a tracepoint."""
        worked = 0
        if not self.fast_idle:
            for _, hook in self._hooks:
                if hook():
                    worked += 1
            return worked
        for kind, hook, obj in self._idle_plan:
            if kind == _BUS:
                if not obj._posted:
                    continue
            elif kind == _HOST_IRQ:
                cache = self._idle_cache
                if cache[0] is not obj.online_cpus:
                    cache = self._host_cpu_cache(obj.online_cpus)
                for rd in cache[2]:
                    if rd.pending:
                        break
                else:
                    for c in cache[1]:
                        c.stats["spurious"] += 1
                    continue
            elif kind == _GUEST_IRQ:
                guest, cpuifs, kvm = obj
                if not kvm.lpi_pending:
                    if not kvm.vpes:
                        for cpu in guest.online_cpus:
                            cpuifs[cpu].stats["spurious"] += 1
                        continue
                    acks = []
                    for cpu in sorted(guest.online_cpus):
                        c = cpuifs[cpu]
                        a = c.idle_ack()
                        if a is False:
                            break
                        acks.append((c, a))
                    else:
                        for c, a in acks:
                            if a is not None:
                                a[0].vpmr = a[1]             # ICH_VMCR_EL2.VPMR
                            c.stats["spurious"] += 1
                        continue
            elif kind == _VEVENTQ:
                fd = obj[0].veventq_fd
                if fd is None:
                    continue
                f = obj[1].get(fd)                   # the VMM's descriptor table
                if f is not None and type(f.f_op) is Veventq and not f.f_op.deliver:
                    continue
            elif kind == _VFIO:
                if not obj._own:
                    continue
            if hook():
                worked += 1
        return worked

    def _idle_hooks(self) -> list[tuple[str, Any]]:
        """What runs whenever no timed event is due, in this order: the host's
        interconnect and interrupts (VFIO's handlers signal eventfds, KVM injects), the
        VMM's own polling (vEVENTQ, masked vectors' eventfds), the guest's interconnect
        and interrupts (the guest's handlers)."""
        assert self.machine is not None                 # booted
        hooks: list[tuple[str, Any]] = [
            ("host bus", self.machine.bus.drain),
            ("host interrupts", self.host.handle_interrupts),
        ]
        smmu = self.board.smmu
        if smmu is not None and getattr(smmu, "mode", None) == "accel":
            hooks.append(("vSMMU vEVENTQ", smmu.event_read))
        for s in self.slots:
            poll = getattr(s.guest_fn, "poll", None)
            if not s.emulated and poll is not None:
                hooks.append((f"vfio-pci {s.index}", poll))
        hooks += [("guest bus", self.board.bus.drain),
                  ("guest interrupts", self._guest_interrupts)]
        return hooks

    def _guest_interrupts(self) -> int:
        n: int = self.guest.handle_interrupts()
        self.guest_handled += n
        return n

    def _accel_vsmmu(self, devs: list[Any]) -> None:
        """QEMU's arm-smmuv3,accel=on: a nest parent over the IOAS (with the first
        device), every device on it, the vSMMU over it, each device behind the vSMMU
        with its guest requester ID as virtual StreamID; routes use its msi-gpa."""
        from ..vmm.smmuv3 import HostIommufd

        parent = self.vmm.alloc_nest_parent(devs[0].devid)
        for dev in devs:
            dev.attach(parent)
        smmu = self._vsmmu("accel", HostIommufd(self.host, self.vmm.iommufd,
                                                self.vmm.ioas_id, parent))
        self.board.attach_smmu(smmu, emulated=False)
        for dev in devs:
            dev.iommu = smmu
            smmu.attach_device(dev.rid, dev)

    def _vsmmu(self, mode: str, host: Any = None) -> Any:
        """The VMM's virtual SMMUv3 over guest RAM (QEMU's -device arm-smmuv3[,accel=on])."""
        from ..vmm.smmuv3 import VirtualSmmuV3

        return VirtualSmmuV3(self.vmm.ram.mem, mode, host, backend=self.desc["backend"])

    @property
    def vsmmu_model(self) -> VirtualSmmuV3 | None:
        """The vSMMU on the guest's board (None without one)."""
        smmu: VirtualSmmuV3 | None = None if self.board is None else self.board.smmu
        return smmu

    # -- running -------------------------------------------------------------------------

    def run(self, for_ns: int | None = None, max_events: int = 100_000) -> int:
        """Run the machine's scheduler until quiescent (or for ``for_ns`` of virtual
        time): timed device events, posted writes on the host's and the guest's buses,
        the host's interrupts (VFIO's handlers signal eventfds, KVM injects), the VMM's
        polling, the guest's interrupts taken by its handlers.  Returns how many guest
        interrupts were handled; :class:`~pymsi.errors.NotQuiescent` (a RuntimeError) if
        not quiescent after ``max_events``."""
        if not self.booted:
            self._booted()
        before = self.guest_handled
        r = self.sched.run(for_ns=for_ns, max_events=max_events)
        if not r.quiescent and for_ns is None:
            raise NotQuiescent(max_events)
        return self.guest_handled - before

    def shutdown(self) -> None:
        """The VMM exits: its descriptors closed and its memory unmapped (see
        :meth:`pymsi.vmm.vmm.Vmm.exit`); the host stays up, its devices back with
        vfio-pci, reset, nothing of the VM left."""
        self._booted()
        self.sched.remove_idle_hook(self._idle_pass)
        self._hooks = []
        self.vmm.exit()
        # nothing of the guest stays reachable: its kernel, board and devices went with
        # the VMM (and the guest-physical view no longer aliases any host frame)
        self.guest = self.board = self.driver = None
        for s in self.slots:
            s.guest_fn = s.guest_pdev = s.test = None
        self.booted = False

    def _booted(self) -> None:
        if not self.booted:
            raise OutOfOrder("boot() the machine first")

    # -- access ----------------------------------------------------------------------------

    def host_function(self, i: int) -> PciFunction:
        """The physical PCI function of described device ``i`` (an assigned device)."""
        self._booted()
        s = self.slots[i]
        if s.host_fn is None:
            raise InvalidArgument(f"device {i} is emulated by the VMM: it has no host "
                                  "function")
        return s.host_fn

    def guest_function(self, i: int) -> PciFunction:
        """The function the guest sees for device ``i`` (on the VMM's virtual PCI bus): the
        VMM's model of an emulated device, its vfio-pci device of an assigned one."""
        self._booted()
        return cast("PciFunction", self.slots[i].guest_fn)     # set by boot()

    def function(self, i: int) -> PciFunction:
        """Where device ``i``'s interrupts start: the physical function of an assigned
        device, the VMM's model of an emulated one."""
        s = self.slots[i]
        return cast("PciFunction", s.guest_fn) if s.emulated else self.host_function(i)

    def endpoint(self, i: int) -> EndpointTest:
        """The guest driver's record for device ``i`` (``hits``: (vector, vCPU) in order)."""
        self._booted()
        return cast("EndpointTest", self.slots[i].test)       # the driver binds every one

    def guest_irq(self, i: int, vector: int) -> int:
        """The guest's Linux IRQ number of device ``i``'s ``vector``."""
        irq: int = self.endpoint(i).irqs[vector]
        return irq

    def guest_cpu_of(self, i: int, vector: int) -> int:
        """The vCPU the guest says the vector is on (/proc/irq/N/effective_affinity)."""
        text = self.guest.proc_read(f"/proc/irq/{self.guest_irq(i, vector)}/effective_affinity")
        mask = int(text, 16)
        return mask.bit_length() - 1

    def set_guest_affinity(self, i: int, vector: int, cpu: int) -> None:
        """The guest moves the vector to ``cpu`` through /proc/irq/N/smp_affinity."""
        self.guest.proc_write(f"/proc/irq/{self.guest_irq(i, vector)}/smp_affinity",
                              f"{1 << cpu:x}")

    def __repr__(self) -> str:
        return (f"<VirtualMachine vsmmu={self.vsmmu} gicv4={self.gicv4} variant={self.variant} "
                f"devices={len(self.slots)} {'booted' if self.booted else 'not booted'}>")
