"""Rule-based state machines to subclass: the host kernel's own drivers
(:class:`HostMachine`), a VMM through iommufd and VFIO (:class:`VfioUserspace`) and a
guest behind an assigned device (:class:`GuestMachine`).

Each drives one pymsi machine with hypothesis rules, records what every step shows
in an observation (:class:`~pymsi.testing.invariants.StepObs` or
:class:`~pymsi.testing.invariants.GuestStepObs`) and judges it after every step with
the invariants of DESIGN.md (:mod:`pymsi.testing.invariants`).  To test a design
variant, subclass one, change its class attributes or hooks (the MSI design class
the kernel uses, the devices, the SMMU set-up, which invariants must hold), add
rules and invariants of your own, and run ``MyMachine.TestCase`` (a
``unittest.TestCase``) or ``hypothesis.stateful.run_state_machine_as_test``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from .. import compare
from ..kernel.drivers import MsiCountingDriver
from ..kernel.iommu import MSI_IOVA_BASE, DomainType
from ..vmmlib import DOORBELL, errno_of, pgtable_leaves
from . import invariants as inv
from .invariants import FireObs, GuestStepObs, StepObs, VectorObs
from .strategies import cpu_masks

if TYPE_CHECKING:
    from ..hw.smmuv3 import SMMUv3
    from ..kernel.gic import ItsDriver
    from ..kernel.iommu import IommuDomain, IommuGroup
    from ..kernel.kernel import Kernel
    from ..kernel.pci import PciDev
    from ..machine import ArmVirt, VirtualMachine
    from ..vmmlib import Vmm


class CountingDriver(Protocol):
    """A host driver as :class:`HostMachine` drives it (what :meth:`HostMachine.make_driver`
    returns; :class:`~pymsi.kernel.drivers.MsiCountingDriver` by default): its vectors'
    IRQ numbers, the CPUs each vector's handler ran on, and its removal."""

    @property
    def nvec(self) -> int:
        """How many vectors it was given."""
        ...

    @property
    def irqs(self) -> Sequence[int]:
        """The Linux IRQ number of each vector."""
        ...

    @property
    def fired(self) -> Mapping[int, Sequence[int | None]]:
        """Vector index -> the CPUs its handler ran on, in order."""
        ...

    def remove(self) -> None:
        """Unbind: the handlers and the vectors freed."""
        ...

# -- the host kernel's own drivers ----------------------------------------------------------


class HostMachine(RuleBasedStateMachine):
    """The host kernel on the Arm virt machine with a nested-capable SMMUv3, ``NDEV``
    functions with ``NVEC`` MSI-X vectors each, its own drivers
    (:class:`~pymsi.kernel.drivers.MsiCountingDriver`) allocating, freeing, masking and
    moving vectors, the functions firing, devices moved between DMA, identity and
    unmanaged domains.

    After every step: each live vector's message translates through the SMMU to the
    doorbell (``routing``); each fire of a live unmasked vector ran its handler exactly
    once and a fire while masked runs it once at unmask (``delivery``); an affinity
    change maps nothing (``no allocation on compose``); freed vectors raise nothing and
    nothing a free released stays mapped or routed.  Hooks: :meth:`make_machine`,
    :meth:`make_driver`, ``NDEV``, ``NVEC``, ``NCPUS``.

    Rules (``i`` a device, ``v`` a vector, drawn wide and taken modulo ``NDEV`` /
    ``NVEC``):

    * ``allocate(i, n)`` -- device ``i``'s driver allocates 1..``NVEC`` vectors
      (nothing if it holds some).
    * ``free(i)`` -- the driver frees its vectors.
    * ``affinity(i, v, cpus)`` -- ``smp_affinity`` of ``v``, ``cpus`` a set of 1-4
      CPUs taken modulo ``NCPUS``; precondition: some driver holds vectors.
    * ``fire(i, v)`` -- the function raises vector ``v``.
    * ``mask(i, v, off)`` -- ``disable_irq`` (``off`` True) or ``enable_irq`` of
      ``v``; precondition: some driver holds vectors.
    * ``attach(i, kind)`` -- move the device to an "identity", "unmanaged" or
      "default" domain.

    Overriding a rule: hypothesis finds rules by their decorator, so a subclass
    method of the same name must be decorated with ``@rule(...)`` (and
    ``@precondition``) again -- an undecorated override silently removes the rule."""

    NDEV: ClassVar[int] = 2
    NVEC: ClassVar[int] = 4
    NCPUS: ClassVar[int] = 4
    SMMU: ClassVar[str] = "nested"

    def __init__(self) -> None:
        super().__init__()
        self.m, self.k = self.make_machine()
        self.drivers: list[CountingDriver | None] = [None] * self.NDEV
        self.expected = [[0] * self.NVEC for _ in range(self.NDEV)]
        self.disabled: list[set[int]] = [set() for _ in range(self.NDEV)]
        # MSI-X pending bits (PBA): a vector raised while masked (by disable_irq, or
        # because no driver vector owns its entry) is sent once it is unmasked.
        self.pending: list[set[int]] = [set() for _ in range(self.NDEV)]
        self.freed_msi: list[tuple[int, int]] = []          # (rid, iova) of freed MSI pages
        self.obs = StepObs("start")

    # -- hooks ---------------------------------------------------------------------------------

    def make_machine(self) -> tuple[ArmVirt, Kernel]:
        """The machine and its booted kernel."""
        from ..machine import ArmVirt

        m = ArmVirt(ncpus=self.NCPUS, devices=[{"msix": self.NVEC}] * self.NDEV,
                    smmu=self.SMMU)
        return m, m.boot()

    def make_driver(self, i: int, n: int) -> CountingDriver:
        """A driver bound to device ``i`` asking for ``n`` vectors (``fired[v]``: the
        CPUs vector ``v``'s handler ran on; ``irqs``, ``nvec``, ``remove()``)."""
        return MsiCountingDriver(self.k, self.k.pci.devices[i], n)

    def mapping_state(self, i: int) -> object:
        """What composing device ``i``'s messages must not change: its domain's leaves and
        MSI cookie pages (any value: a step compares it before and after with ``==``)."""
        dom = cast("IommuGroup", self.k.pci.devices[i].iommu_group).domain   # behind the SMMU
        pg = getattr(dom, "pgtbl", None)
        pages = getattr(getattr(dom, "cookie", None), "msi_pages", None) or {}
        return {"page table": frozenset(pgtable_leaves(pg)) if pg is not None else None,
                "MSI cookie pages": frozenset((p.phys, p.iova) for p in pages.values())}

    # -- rules ---------------------------------------------------------------------------------

    # Drawn wide and taken modulo NDEV / NVEC, so that a subclass changing them keeps
    # every rule meaningful.
    devs = st.integers(0, 15)
    vecs = st.integers(0, 15)

    @rule(i=devs, n=vecs)
    def allocate(self, i: int, n: int) -> None:
        i, n = i % self.NDEV, 1 + n % self.NVEC
        self.obs.step = f"allocate(i={i}, n={n})"
        if self.drivers[i] is not None:
            return
        drv = self.drivers[i] = self.make_driver(i, n)
        self.k.handle_interrupts()                   # what became deliverable, is taken
        nvec = drv.nvec
        self.expected[i] = [1 if v in self.pending[i] else 0 for v in range(nvec)]
        self.pending[i] -= set(range(nvec))
        self.disabled[i] = set()

    @rule(i=devs)
    def free(self, i: int) -> None:
        i %= self.NDEV
        self.obs.step = f"free(i={i})"
        drv = self.drivers[i]
        if drv is None:
            return
        dev = self.k.pci.devices[i]
        iovas = {d.msg.address & ~0xFFF for d in dev.msi_descs.values()}
        for v in self.disabled[i]:
            self.k.irq.enable_irq(drv.irqs[v])       # delivers what was pending
            self.pending[i].discard(v)
        drv.remove()
        self.k.handle_interrupts()
        self.drivers[i] = None
        self.freed_msi += [(dev.rid, iova) for iova in iovas]

    @precondition(lambda self: any(self.drivers))
    @rule(i=devs, v=vecs, cpus=cpu_masks(ncpus=64, min_size=1, max_size=4))
    def affinity(self, i: int, v: int, cpus: frozenset[int]) -> None:
        i, v = i % self.NDEV, v % self.NVEC
        cpus = frozenset(c % self.NCPUS for c in cpus)
        drv = self.drivers[i]
        if drv is None or v >= drv.nvec:
            return
        irq = drv.irqs[v]
        text = f"{sum(1 << c for c in cpus):x}"
        self.obs.step = f"affinity(i={i}, v={v}, cpus={sorted(cpus)})"
        inv.composed(self.obs, f"smp_affinity {text} of dev {i} vector {v}",
                     lambda: self.mapping_state(i),
                     lambda: self.k.proc_write(f"/proc/irq/{irq}/smp_affinity", text))
        eff = self.k.irq.desc(irq).irq_data.common.effective_affinity
        assert len(eff) == 1 and next(iter(eff)) in cpus, (sorted(eff), sorted(cpus))

    @rule(i=devs, v=vecs)
    def fire(self, i: int, v: int) -> None:
        i, v = i % self.NDEV, v % self.NVEC
        self.obs.step = f"fire(i={i}, v={v})"
        drv = self.drivers[i]
        before = len(drv.fired[v]) if drv is not None and v < drv.nvec else 0
        self.m.functions[i].notify(v)
        self.k.handle_interrupts()
        if drv is None:
            return                                   # MSI-X disabled: nothing at all
        if v >= drv.nvec or v in self.disabled[i]:
            self.pending[i].add(v)                   # entry masked: pending bit
        else:
            self.expected[i][v] += 1
            self.obs.fires.append(FireObs(i, v, "deliver", signals={
                (i, v): len(drv.fired[v]) - before} if len(drv.fired[v]) != before else {}))

    @precondition(lambda self: any(self.drivers))
    @rule(i=devs, v=vecs, off=st.booleans())
    def mask(self, i: int, v: int, off: bool) -> None:
        i, v = i % self.NDEV, v % self.NVEC
        self.obs.step = f"mask(i={i}, v={v}, off={off})"
        drv = self.drivers[i]
        if drv is None or v >= drv.nvec or off == (v in self.disabled[i]):
            return
        if off:
            self.k.irq.disable_irq(drv.irqs[v])
            self.disabled[i].add(v)
        else:
            self.k.irq.enable_irq(drv.irqs[v])
            self.k.handle_interrupts()
            self.disabled[i].discard(v)
            if v in self.pending[i]:
                self.pending[i].discard(v)
                self.expected[i][v] += 1

    @rule(i=devs, kind=st.sampled_from(["identity", "unmanaged", "default"]))
    def attach(self, i: int, kind: str) -> None:
        i %= self.NDEV
        self.obs.step = f"attach(i={i}, kind={kind!r})"
        if self.drivers[i] is not None:
            return                                   # a bound driver owns DMA: not now
        dev = self.k.pci.devices[i]
        group = cast("IommuGroup", dev.iommu_group)          # behind the SMMU
        if group.domain is not group.default_domain:
            old = cast("IommuDomain", group.domain)          # attached: the default at least
            self.k.iommu.detach_group(old, group)
            if old.type == DomainType.UNMANAGED:
                self.k.iommu.domain_free(old)
        if kind == "identity":
            self.k.iommu.attach_group(self.k.iommu.identity_domain(dev), group)
        elif kind == "unmanaged":
            dom = self.k.iommu.domain_alloc_paging(dev)
            self.k.dma_iommu.get_msi_cookie(dom, MSI_IOVA_BASE)
            self.k.iommu.attach_group(dom, group)

    # -- invariants ------------------------------------------------------------------------------

    def observe(self) -> StepObs:
        """This step's observation: the live vectors (address, where the SMMU takes a
        write to it), the fires and composes the rules recorded."""
        obs = self.obs
        for i, drv in enumerate(self.drivers):
            if drv is None:
                continue
            dev = self.k.pci.devices[i]
            for desc in dev.msi_descs.values():
                a = desc.msg.address
                pa = cast("SMMUv3", self.m.smmu).translate(dev.rid, a, write=True).pa
                obs.vectors.append(VectorObs(i, desc.msi_index, a, desc.msg.data, False,
                                             None, pa))
        return obs

    @invariant()
    def design_invariants(self) -> None:
        """routing, delivery and no allocation on compose of this step."""
        obs, self.obs = self.observe(), StepObs("step")
        inv.routing(StepObs(obs.step, vectors=obs.vectors))
        inv.check(obs, ["delivery", "no allocation on compose"])

    @invariant()
    def each_fire_ran_its_handler_once(self) -> None:
        for i, drv in enumerate(self.drivers):
            if drv is not None:
                assert [len(drv.fired[v]) for v in range(drv.nvec)] == self.expected[i]

    @invariant()
    def nothing_stale_after_free(self) -> None:
        for i, drv in enumerate(self.drivers):
            if drv is None:
                dev = self.k.pci.devices[i]
                assert dev.rid not in cast("ItsDriver", self.k.its).devices
                assert self.m.functions[i].msix_enabled is False
        for rid, iova in self.freed_msi:
            dev = next(d for d in self.k.pci.devices if d.rid == rid)
            still = self.drivers[self.k.pci.devices.index(dev)]
            if still is not None and any(d.msg.address & ~0xFFF == iova
                                         for d in dev.msi_descs.values()):
                continue                             # mapped again by a new allocation
            r = cast("SMMUv3", self.m.smmu).translate(rid, iova | 0x40, write=True)
            assert r.pa != DOORBELL or cast(
                "IommuDomain", cast("IommuGroup", dev.iommu_group).domain).type == \
                DomainType.IDENTITY


# -- a VMM through iommufd and VFIO ----------------------------------------------------------


class VfioUserspace(RuleBasedStateMachine):
    """A VMM (QEMU-like) through the user/kernel contract -- ``/dev/iommu``, a VFIO cdev,
    eventfds, ``/proc`` -- with one assigned function of 8 MSI-X vectors
    behind the SMMU (``SMMU``: "paging", a stage-1 HWPT; "nested", a guest stage 1 over
    a nest parent), under the MSI design ``DESIGN`` (how the VMM hands its chosen
    addresses down: "per-vector", "preset", "sw-msi", "dma-cookie").  ``HOOKS`` replaces
    the kernel's design object (a subclass of
    :class:`pymsi.kernel.iommufd_msi.MsiDesignBase`, e.g. a variant of
    :class:`~pymsi.kernel.iommufd_msi.PerVectorMsi`): the way to test a new design.

    Set-up: the VMM chooses an address for vectors 0..3 and enables them (the scenario
    of ``pymsi compare``, :class:`pymsi.compare.Scenario`, whose steps the rules reuse).  Rules:
    a vector fires; ``/proc`` affinity changes (composed); a two-step address update
    (a new address handed down, then an affinity write -- or, without per-vector, a
    re-enable); enabling a vector the VMM never described; unmapping a vector's
    doorbell page.  After every step the observation is judged with ``CHECKED`` (by
    default all six invariants of DESIGN.md).

    Rules (``v`` one of the enabled vectors 0..3):

    * ``setup()`` -- the @initialize step above.
    * ``fire(v)`` -- function 0 raises ``v`` (a fault if its doorbell is unmapped).
    * ``affinity(v, cpus)`` -- ``/proc/irq/N/smp_affinity`` of ``v``, ``cpus`` a
      non-empty subset of the 4 CPUs (composes the message again).
    * ``move(v, slot)`` -- two-step address update to address ``slot`` of ``SLOTS``.
    * ``enable_undescribed()`` -- enable a vector the VMM gave no address (must be
      ENOENT, nothing changed); precondition: not done yet in this run.
    * ``unmap_doorbell(v)`` -- IOMMU_IOAS_UNMAP of the page ``v``'s message goes to.

    Overriding a rule: hypothesis finds rules by their decorator, so a subclass
    method of the same name must be decorated with ``@rule(...)`` (and
    ``@precondition``) again -- an undecorated override silently removes the rule."""

    DESIGN: ClassVar[str] = "per-vector"
    SMMU: ClassVar[str] = "paging"
    HOOKS: ClassVar[type | None] = None
    CHECKED: ClassVar[tuple[str, ...]] = inv.INVARIANTS
    SLOTS: ClassVar[int] = 12                        # addresses the VMM picks from

    def __init__(self) -> None:
        super().__init__()
        self.sc = compare.Scenario(self.DESIGN, self.SMMU, self.HOOKS)
        self.obs = StepObs("setup")
        self.undescribed_done = False

    @initialize()
    def setup(self) -> None:
        """Bind, attach, choose and hand down the addresses of vectors 0..3, enable them."""
        self.sc.step_setup(self.obs)
        self.sc.compose(self.obs, f"enable {compare.NVEC} vectors",
                        lambda: self.sc.enable(0, list(range(compare.NVEC))))

    @property
    def vmm(self) -> Vmm:
        """The :class:`pymsi.vmmlib.Vmm` (``vmm.k``: the host kernel; ``vmm.m``: the machine),
        made by :meth:`setup`."""
        return cast("Vmm", self.sc.vmm)

    # -- rules ---------------------------------------------------------------------------------

    vecs = st.integers(0, compare.NVEC - 1)

    @rule(v=vecs)
    def fire(self, v: int) -> None:
        """Function 0 raises vector ``v`` (a fault if its doorbell page is unmapped)."""
        self.obs.step = f"fire(v={v})"
        page = self.sc.ipa_page(self.vmm.entry(v)[0])
        expect = "fault" if page is not None and page in self.sc.unmapped else "deliver"
        self.sc.fire(self.obs, 0, v, expect=expect)

    @rule(v=vecs, cpus=cpu_masks(ncpus=4, min_size=1))
    def affinity(self, v: int, cpus: frozenset[int]) -> None:
        """``/proc/irq/N/smp_affinity`` of vector ``v`` (composes its message again)."""
        self.obs.step = f"affinity(v={v}, cpus={sorted(cpus)})"
        path = f"/proc/irq/{self.vmm.irq(v)}/smp_affinity"
        text = f"{sum(1 << c for c in cpus):x}"
        self.sc.compose(self.obs, f"smp_affinity {text} of vector {v}",
                        lambda: self.vmm.k.proc_write(path, text))
        self.sc.fire(self.obs, 0, v, expect=self._expect(v))

    @rule(v=vecs, slot=st.integers(0, SLOTS - 1))
    def move(self, v: int, slot: int) -> None:
        """Two-step address update: the VMM picks ``slot`` for ``v``, hands it down, then
        (per-vector) an affinity write composes the message, or (other designs) it
        disables and re-enables MSI-X."""
        self.obs.step = f"move(v={v}, slot={slot})"
        sc, vmm = self.sc, self.vmm
        new = sc.slot(slot)
        sc.chosen[(0, v)] = new
        sc.map_doorbell(new)
        page = sc.ipa_page(new)
        sc.unmapped.discard(page)
        sc.hand_down(0, [v])
        if self.DESIGN == "per-vector":
            path = f"/proc/irq/{vmm.irq(v)}/smp_affinity"
            sc.compose(self.obs, f"smp_affinity after a new address for vector {v}",
                       lambda: vmm.k.proc_write(path, "1"))
        else:
            vmm.disable()
            vecs = sorted(w for d, w in sc.enabled if d == 0)
            for w in vecs:
                sc.enabled.discard((0, w))
            sc.compose(self.obs, "re-enable", lambda: sc.enable(0, vecs))
        sc.fire(self.obs, 0, v, expect=self._expect(v))

    @precondition(lambda self: not self.undescribed_done)
    @rule()
    def enable_undescribed(self) -> None:
        """Enable a vector the VMM gave no address (must be ENOENT, nothing changed)."""
        self.obs.step = "enable_undescribed()"
        self.undescribed_done = True
        self.sc.step_undescribed(self.obs)

    @rule(v=vecs)
    def unmap_doorbell(self, v: int) -> None:
        """IOMMU_IOAS_UNMAP of the page vector ``v``'s message goes through (refused when
        the kernel mapped it itself); then ``v`` fires."""
        self.obs.step = f"unmap_doorbell(v={v})"
        sc = self.sc
        page = sc.ipa_page(self.vmm.entry(v)[0])
        if page is None or page in sc.unmapped:
            return
        if errno_of(self.vmm.unmap, page) == 0:
            sc.unmapped.add(page)
        sc.fire(self.obs, 0, v, expect=self._expect(v))

    def _expect(self, v: int) -> str:
        page = self.sc.ipa_page(self.vmm.entry(v)[0])
        return "fault" if page is not None and page in self.sc.unmapped else "deliver"

    # -- invariants ------------------------------------------------------------------------------

    def observe(self) -> StepObs:
        """This step's observation, with the enabled vectors as they are now."""
        self.obs.vectors = self.sc.vectors()
        return self.obs

    @invariant()
    def design_invariants(self) -> None:
        """Every invariant of ``CHECKED`` holds for this step."""
        obs = self.observe()
        self.obs = StepObs("step")
        inv.check(obs, self.CHECKED)


# -- a guest behind an assigned device ---------------------------------------------------------


class GuestMachine(RuleBasedStateMachine):
    """A whole virtual machine (:class:`pymsi.machine.VirtualMachine`): a guest Linux whose
    driver uses 4 MSI-X vectors of an assigned function, the VMM under MSI design
    ``DESIGN``, the vSMMU ``VSMMU`` ("accel": the guest's stage 1 nested over the host's
    stage 2; "none") and GICv4 (``GICV4``) on or off.  Rules are guest-level actions and
    device writes: a vector fires; the guest moves a vector to another vCPU
    (``/proc``); it masks and unmasks a vector (composed); the device writes an EventID
    no ITT holds; it DMAs outside the IOAS.  After every step the observation is judged
    with ``CHECKED`` (by default all six invariants).  ``DESIGN`` is one of the four
    design names (a new kernel-side design class is tested with
    :attr:`VfioUserspace.HOOKS`).

    Rules (``v`` one of the guest's 4 vectors):

    * ``boot()`` -- the @initialize step: boot the VM, the driver enables its vectors.
    * ``fire(v)`` -- the physical function raises ``v``.
    * ``move(v, cpu)`` -- the guest moves ``v`` to vCPU ``cpu`` (0-7, modulo its
      vCPUs), then ``v`` fires.
    * ``mask_unmask(v)`` -- the guest's disable_irq + enable_irq, then ``v`` fires.
    * ``foreign_event()`` -- the device writes an EventID no ITT holds.
    * ``dma_outside()`` -- the device DMAs outside every IOAS area.

    Overriding a rule: hypothesis finds rules by their decorator, so a subclass
    method of the same name must be decorated with ``@rule(...)`` (and
    ``@precondition``) again -- an undecorated override silently removes the rule."""

    DESIGN: ClassVar[str] = "per-vector"
    VSMMU: ClassVar[str] = "accel"
    GICV4: ClassVar[bool] = False
    CHECKED: ClassVar[tuple[str, ...]] = inv.INVARIANTS

    def __init__(self) -> None:
        super().__init__()
        self.sc = compare.GuestScenario(self.DESIGN, self.VSMMU, self.GICV4)
        self.obs = GuestStepObs("boot")

    @initialize()
    def boot(self) -> None:
        """Boot the VM (the guest's driver enables its vectors, composed)."""
        self.sc.step_boot(self.obs)

    @property
    def vm(self) -> VirtualMachine:
        """The booted :class:`pymsi.machine.VirtualMachine`."""
        return cast("VirtualMachine", self.sc.vm)

    vecs = st.integers(0, compare.GUEST_NVEC - 1)

    @rule(v=vecs)
    def fire(self, v: int) -> None:
        """The physical function raises vector ``v``."""
        self.obs.step = f"fire(v={v})"
        self.sc.fire(self.obs, v)

    @rule(v=vecs, cpu=st.integers(0, 7))
    def move(self, v: int, cpu: int) -> None:
        """The guest moves ``v`` to vCPU ``cpu`` (modulo its vCPUs), then ``v`` fires."""
        self.obs.step = f"move(v={v}, cpu={cpu})"
        vm = self.vm
        vm.set_guest_affinity(0, v, cpu % vm.desc["guest_ncpus"])
        vm.run()
        self.sc.fire(self.obs, v)

    @rule(v=vecs)
    def mask_unmask(self, v: int) -> None:
        """The guest's disable_irq + enable_irq of ``v`` (composed), then ``v`` fires."""
        self.obs.step = f"mask_unmask(v={v})"
        vm = self.vm

        def toggle() -> None:
            vm.guest.irq.disable_irq(vm.guest_irq(0, v))
            vm.run()
            vm.guest.irq.enable_irq(vm.guest_irq(0, v))
            vm.run()

        inv.composed(self.obs, f"guest disable_irq + enable_irq of vector {v}",
                     lambda: compare.implicit_state(compare.host_mapping_state(vm)), toggle)
        self.sc.fire(self.obs, v)

    @rule()
    def foreign_event(self) -> None:
        """The device writes an EventID no ITT holds to its own MSI address."""
        self.obs.step = "foreign_event()"
        self.sc.step_foreign(self.obs)

    @rule()
    def dma_outside(self) -> None:
        """The device DMAs to an address no IOAS area (nor guest mapping) covers."""
        self.obs.step = "dma_outside()"
        self.sc.step_outside(self.obs)

    def observe(self) -> GuestStepObs:
        """This step's observation, with the vectors as they are now."""
        self.obs.vectors = self.sc.vectors()
        return self.obs

    @invariant()
    def design_invariants(self) -> None:
        """Every invariant of ``CHECKED`` holds for this step."""
        obs = self.observe()
        self.obs = GuestStepObs("step")
        inv.check(obs, self.CHECKED)


class AssignedGuest(RuleBasedStateMachine):
    """A guest's own view of an assigned multi-queue NIC (``QUEUES`` vectors), on a machine
    drawn from the configurations that deliver: no vSMMU or an accelerated one, GICv4 on
    or off, the per-vector or sw-msi design, 1-4 vCPUs.  Rules: fire, move (``/proc``),
    mask / unmask (``disable_irq`` / ``enable_irq``, nesting), reprogram (the guest writes
    another vector's message into an entry), reset (FLR).

    The model is the guest's: MSI-X pending bits (a vector masked in the device is held
    and sent at unmask), a disabled LPI staying pending in the (v)ITS, a reprogrammed
    entry raising the other vector's interrupt, and with GICv4 which host vector forwards
    which vLPI (a vLPI pending in the vPE's table is lost when its forwarding is unset,
    as on Linux).  After every step each interrupt the guest should have taken was taken
    exactly once, by the right handler, on the vCPU ``/proc`` shows
    (``delivered_exactly_as_expected``) -- the delivery invariant as the guest sees it.
    Hooks: :meth:`make_vm`, ``QUEUES``.

    Rules (``v``, ``w`` queues 0..``QUEUES``-1):

    * ``boot(vsmmu, gicv4, design, ncpus)`` -- the @initialize step: draws the machine
      (vSMMU None / "accel", GICv4, "per-vector" / "sw-msi", 1-4 vCPUs).
    * ``fire(v)`` -- the NIC raises queue ``v``'s vector.
    * ``move(v, cpu)`` -- ``/proc`` affinity of ``v`` to vCPU ``cpu`` (0-3, modulo).
    * ``mask(v)`` -- ``disable_irq`` (nests).
    * ``unmask(data)`` -- ``enable_irq`` of a vector it draws among the disabled;
      precondition: one is disabled.
    * ``reprogram(v, w)`` -- the guest writes ``w``'s message into ``v``'s entry.
    * ``reset()`` -- FLR; the messages come back from the guest's descriptors.

    Overriding a rule: hypothesis finds rules by their decorator, so a subclass
    method of the same name must be decorated with ``@rule(...)`` (and
    ``@precondition``) again -- an undecorated override silently removes the rule."""

    QUEUES: ClassVar[int] = 6

    def make_vm(self, vsmmu: str | None, gicv4: bool, design: str,
                ncpus: int) -> VirtualMachine:
        """The booted :class:`pymsi.machine.VirtualMachine` of one example."""
        from ..machine import VirtualMachine

        return VirtualMachine(vsmmu=vsmmu, gicv4=gicv4, variant=design, guest_ncpus=ncpus,
                              devices=[{"model": "nic", "queues": self.QUEUES}]).boot()

    @initialize(vsmmu=st.sampled_from([None, "accel"]), gicv4=st.booleans(),
                design=st.sampled_from(["per-vector", "sw-msi"]), ncpus=st.integers(1, 4))
    def boot(self, vsmmu: str | None, gicv4: bool, design: str, ncpus: int) -> None:
        from ..kernel.msi import MsiMsg

        self.vm = self.make_vm(vsmmu, gicv4, design, ncpus)
        self.gicv4 = gicv4
        self.ncpus = ncpus
        self.n = self.QUEUES
        self.expected: list[tuple[int, int]] = []
        self.depth = [0] * self.n
        self.held: set[int] = set()           # pending in the device (PBA)
        self.lpi_pending: set[int] = set()    # pending in the guest's (v)ITS, LPI disabled
        self.alias: dict[int, int] = {}       # vector -> the vector whose message it carries
        # GICv4: the LPI each host vector forwards (LPI -> vector), and the pending LPIs
        # whose state is in the vPE's pending table rather than KVM's pending_latch.
        self.fwd: dict[int, int] = {v: v for v in range(self.n)} if gicv4 else {}
        self.vpt: set[int] = set()
        descs = self._guest_pdev().msi_descs
        self.msgs = [MsiMsg.of(descs[v].msg.address, descs[v].msg.data)
                     for v in range(self.n)]

    def _guest_pdev(self) -> PciDev:
        """The NIC as the guest kernel enumerated it (the VM is booted)."""
        return cast("PciDev", self.vm.slots[0].guest_pdev)

    def _cpu(self, v: int) -> int:
        return int(self.vm.guest_cpu_of(0, v))

    def _unforward(self, v: int) -> None:
        """The host vector ``v`` stops feeding KVM's irqfd (the guest masked it, the VMM
        turned MSI-X off, or its route changed): kvm_vgic_v4_unset_forwarding() unmaps
        the vLPI it forwarded with a DISCARD (its_vlpi_unmap), which clears the vLPI's
        bit in the vPE's pending table; Linux carries nothing back to the vgic, so a
        vLPI pending there while disabled is lost."""
        for lpi in [t for t, u in self.fwd.items() if u == v]:
            del self.fwd[lpi]
            if lpi in self.vpt:
                self.vpt.discard(lpi)
                self.lpi_pending.discard(lpi)

    def _forward(self, v: int) -> None:
        """The host vector ``v`` feeds KVM's irqfd again: with GICv4 it forwards its
        route's LPI unless another vector already does (kvm_vgic_v4_set_forwarding skips
        a mapped vLPI); a pending_latch goes to the vPE's pending table."""
        if not self.gicv4:
            return
        lpi = self.alias.get(v, v)
        if lpi not in self.fwd:
            self.fwd[lpi] = v
            if lpi in self.lpi_pending:
                self.vpt.add(lpi)

    def _send(self, v: int) -> None:
        """Vector ``v``'s message reaches the guest's ITS: the LPI of the vector whose
        message it carries, which stays pending while that interrupt is disabled (the
        guest's disable_irq masks the LPI too) -- in the vPE's pending table if a host
        vector forwards that LPI, else in KVM's pending_latch."""
        target = self.alias.get(v, v)
        if self.depth[target]:
            self.lpi_pending.add(target)
            if target in self.fwd:
                self.vpt.add(target)
        else:
            self.expected.append((target, self._cpu(target)))

    def _deliver(self, v: int) -> None:
        if self.depth[v]:                     # masked in the device: held in the PBA
            self.held.add(v)
        else:
            self._send(v)

    queues = st.integers(0, 63)               # taken modulo QUEUES

    @rule(v=queues)
    def fire(self, v: int) -> None:
        v %= self.n
        self.vm.host_function(0).notify(v)
        self.vm.run()
        self._deliver(v)

    @rule(v=queues, cpu=st.integers(0, 3))
    def move(self, v: int, cpu: int) -> None:
        v, cpu = v % self.n, cpu % self.ncpus
        self.vm.set_guest_affinity(0, v, cpu)
        assert self._cpu(v) == cpu

    @rule(v=queues)
    def mask(self, v: int) -> None:
        v %= self.n
        self.vm.guest.irq.disable_irq(self.vm.guest_irq(0, v))
        self.depth[v] += 1
        if self.depth[v] == 1:                # masked in the device: the VMM's own eventfd
            self._unforward(v)

    @precondition(lambda self: any(self.depth))
    @rule(data=st.data())
    def unmask(self, data: st.DataObject) -> None:
        v = data.draw(st.sampled_from([i for i in range(self.n) if self.depth[i]]))
        self.vm.guest.irq.enable_irq(self.vm.guest_irq(0, v))
        self.depth[v] -= 1
        self.vm.run()
        if self.depth[v]:
            return
        self._forward(v)                      # unmasked in the device: KVM's irqfd again
        if v in self.lpi_pending:             # the LPI enabled again: taken now
            self.lpi_pending.discard(v)
            self.vpt.discard(v)
            self.expected.append((v, self._cpu(v)))
        if v in self.held:                    # the device sends what its PBA held
            self.held.discard(v)
            self._send(v)

    @rule(v=queues, w=queues)
    def reprogram(self, v: int, w: int) -> None:
        """The guest writes vector ``w``'s message into vector ``v``'s entry."""
        v, w = v % self.n, w % self.n
        descs = self._guest_pdev().msi_descs
        self.vm.guest.msi.write_msg(descs[v], self.msgs[w])
        changed = self.alias.get(v, v) != w
        self.alias[v] = w
        self.vm.run()
        if changed and not self.depth[v]:     # a live vector's new route
            self._unforward(v)
            self._forward(v)

    @rule()
    def reset(self) -> None:
        """The guest's FLR: the messages come back from the guest's descriptors (a
        reprogrammed one as reprogrammed); what was pending in the device is gone.  The
        VMM turns the host's vectors off around the reset (every forwarding unset, see
        :meth:`_unforward`) and on again in vector order (:meth:`_forward`)."""
        self._guest_pdev().reset_function()
        self.vm.run()
        self.held.clear()
        for v in range(self.n):
            self._unforward(v)
        for v in range(self.n):
            if not self.depth[v]:
                self._forward(v)

    @invariant()
    def delivered_exactly_as_expected(self) -> None:
        """Exactly the expected interrupts, each on its vCPU (the order of two taken in
        one run on different vCPUs is the guest's CPU order, not an invariant)."""
        if hasattr(self, "vm"):
            assert sorted(self.vm.endpoint(0).hits) == sorted(self.expected)

__all__ = ["AssignedGuest", "GuestMachine", "HostMachine", "VfioUserspace"]
