"""KVM interrupt routing as a VMM drives it (QEMU's ``accel/kvm`` ``kvm_irqchip_*``).

:class:`KvmIrqchip` keeps the VM's GSI routing table in the VMM, as QEMU's
``KVMState`` does: MSI routes are added, updated and released in the VMM's copy
and reach KVM only when :meth:`~KvmIrqchip.commit_routes` sends the whole table
with one ``KVM_SET_GSI_ROUTING`` (each route with ``KVM_MSI_VALID_DEVID`` and the
requester ID, as an Arm GICv3 ITS needs).  irqfds bind an eventfd to a GSI
(``KVM_IRQFD``); :meth:`~KvmIrqchip.send_msi` injects one MSI now
(``KVM_SIGNAL_MSI``).  Everything goes through the VM file's ioctls.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..uapi import kvm as K
from ._trace import Tracepoint

if TYPE_CHECKING:
    from ..uapi.syscalls import OpenFile, Syscalls

trace_kvm_irqchip_add_msi_route = Tracepoint("kvm_irqchip_add_msi_route", "name", "vector",
                                             "virq")
trace_kvm_irqchip_update_msi_route = Tracepoint("kvm_irqchip_update_msi_route", "virq")
trace_kvm_irqchip_release_virq = Tracepoint("kvm_irqchip_release_virq", "virq")
trace_kvm_irqchip_commit_routes = Tracepoint("kvm_irqchip_commit_routes")

KVM_MAX_IRQ_ROUTES = 4096          # what KVM_CAP_IRQ_ROUTING answers on arm64


@dataclass(frozen=True)
class MsiRouteEntry:
    """One MSI route of the VMM's table: doorbell address, data, DeviceID."""

    address: int
    data: int
    devid: int


class KvmIrqchip:
    """The VMM's GSI routing table for VM file ``vm_fd`` of kernel ``k``.

    ``first_gsi`` is the first GSI free for MSI routes (QEMU's arm virt board
    gives the GIC's SPI pins the low GSIs); ``max_routes`` the number of GSIs.
    """

    def __init__(self, k: Syscalls, vm_fd: int, first_gsi: int = 0,
                 max_routes: int = KVM_MAX_IRQ_ROUTES) -> None:
        self.k = k
        self.vm_fd = vm_fd
        self.first_gsi = first_gsi
        self.max_routes = max_routes
        self.routes: dict[int, MsiRouteEntry] = {}
        # gsi -> (route, the bytes of its kvm_irq_routing_entry), each packed once
        self._entries: dict[int, tuple[MsiRouteEntry, bytes]] = {}
        # the table last sent: its GSIs in order and its bytes; GSIs added since, and
        # whether a route was changed or released since (the table is laid out again)
        self._table_gsis: list[int] = []
        self._table = bytearray()
        self._added: set[int] = set()
        self._relayout = False
        self._gsi_hint = 0             # every GSI from first_gsi below this one is in use
        self.dirty = False
        self.commits = 0
        self.irqfds: set[tuple[int, int]] = set()      # (eventfd fd, gsi) assigned

    # -- the routing table -------------------------------------------------------------

    def _get_virq(self) -> int:
        """kvm_irqchip_get_virq(): the lowest free GSI, ENOSPC when none is left."""
        gsi = max(self._gsi_hint, self.first_gsi)
        while gsi < self.max_routes:
            if gsi not in self.routes:
                self._gsi_hint = gsi
                return gsi
            gsi += 1
        raise OSError(_errno.ENOSPC, "no free GSI for an MSI route")

    @staticmethod
    def _check(addr: int, data: int, devid: int) -> MsiRouteEntry:
        for name, v, bits in (("address", addr, 64), ("data", data, 32), ("devid", devid, 32)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << bits:
                raise OSError(_errno.EINVAL, f"MSI route {name} {v!r} out of range")
        return MsiRouteEntry(addr, data, devid)

    def add_msi_route(self, addr: int, data: int, devid: int, vector: int = -1,
                      name: str = "") -> int:
        """kvm_irqchip_add_msi_route(): a new GSI routing (addr, data, devid); the
        table is sent at the next :meth:`commit_routes`."""
        entry = self._check(addr, data, devid)
        gsi = self._get_virq()
        self.routes[gsi] = entry
        self._added.add(gsi)
        self.dirty = True
        if trace_kvm_irqchip_add_msi_route.enabled:
            trace_kvm_irqchip_add_msi_route(name=name, vector=vector, virq=gsi)
        return gsi

    def update_msi_route(self, gsi: int, addr: int, data: int, devid: int) -> None:
        """kvm_irqchip_update_msi_route(): ENOENT for a GSI without a route."""
        if gsi not in self.routes:
            raise OSError(_errno.ENOENT, f"GSI {gsi} has no route")
        entry = self._check(addr, data, devid)
        if self.routes[gsi] != entry:
            self.routes[gsi] = entry
            self._relayout = True
            self.dirty = True
        if trace_kvm_irqchip_update_msi_route.enabled:
            trace_kvm_irqchip_update_msi_route(virq=gsi)

    def release_virq(self, gsi: int) -> None:
        """kvm_irqchip_release_virq(): the GSI's route goes (at the next commit)."""
        if self.routes.pop(gsi, None) is not None:
            self._relayout = True
            self._gsi_hint = min(self._gsi_hint, gsi)
            self.dirty = True
        if trace_kvm_irqchip_release_virq.enabled:
            trace_kvm_irqchip_release_virq(virq=gsi)

    def route(self, gsi: int) -> MsiRouteEntry | None:
        return self.routes.get(gsi)

    def _packed(self, gsi: int) -> bytes:
        """The route of ``gsi`` as the bytes of its ``kvm_irq_routing_entry`` (each
        route packed once)."""
        r = self.routes[gsi]
        cached = self._entries.get(gsi)
        if cached is not None and cached[0] is r:
            return cached[1]
        e = K.KvmIrqRoutingEntry(
            gsi=gsi, type=K.KVM_IRQ_ROUTING_MSI, flags=K.KVM_MSI_VALID_DEVID,
            u={"msi": {"address_lo": r.address & 0xFFFF_FFFF,
                       "address_hi": r.address >> 32, "data": r.data, "devid": r.devid}})
        b = e.pack()
        self._entries[gsi] = (r, b)
        return b

    def commit_routes(self) -> None:
        """kvm_irqchip_commit_routes(): one KVM_SET_GSI_ROUTING with the whole table
        (entries in GSI order).  The VMM keeps the bytes of the table it last sent:
        routes added above every GSI in it are appended, any other change lays the
        table out again."""
        last = self._table_gsis
        added = self._added
        if (self._relayout or not all(g in self.routes for g in added) or len(last) + len(added)
                != len(self.routes) or (last and added and min(added) <= last[-1])):
            for gsi in [g for g in self._entries if g not in self.routes]:
                del self._entries[gsi]
            last = self._table_gsis = sorted(self.routes)
            self._table = bytearray(b"".join(self._packed(g) for g in last))
        elif added:
            new = sorted(added)
            self._table += b"".join(self._packed(g) for g in new)
            last.extend(new)
        self._added = set()
        self._relayout = False
        self.k.ioctl(self.vm_fd, K.KVM_SET_GSI_ROUTING,
                     K.KvmIrqRouting(nr=len(last), entries=bytes(self._table)))
        self.dirty = False
        self.commits += 1
        if trace_kvm_irqchip_commit_routes.enabled:
            trace_kvm_irqchip_commit_routes()

    # -- irqfds and direct injection -----------------------------------------------------

    @staticmethod
    def _fd(efd: int | OpenFile) -> int:
        return cast(int, getattr(efd, "fd", efd))

    def add_irqfd(self, efd: int | OpenFile, gsi: int) -> None:
        """kvm_irqchip_add_irqfd_notifier_gsi(): KVM_IRQFD binding eventfd ``efd``
        (a descriptor number or its File) to ``gsi``."""
        fd = self._fd(efd)
        self.k.ioctl(self.vm_fd, K.KVM_IRQFD, K.KvmIrqfd(fd=fd, gsi=gsi, flags=0))
        self.irqfds.add((fd, gsi))

    def remove_irqfd(self, efd: int | OpenFile, gsi: int) -> None:
        """kvm_irqchip_remove_irqfd_notifier_gsi(): KVM_IRQFD with DEASSIGN."""
        fd = self._fd(efd)
        self.k.ioctl(self.vm_fd, K.KVM_IRQFD,
                     K.KvmIrqfd(fd=fd, gsi=gsi, flags=K.KVM_IRQFD_FLAG_DEASSIGN))
        self.irqfds.discard((fd, gsi))

    def send_msi(self, addr: int, data: int, devid: int) -> int:
        """kvm_irqchip_send_msi(): KVM_SIGNAL_MSI; 1 delivered, 0 blocked by the
        guest, an OSError as KVM answers (EINVAL outside every vITS)."""
        entry = self._check(addr, data, devid)
        return cast(int, self.k.ioctl(self.vm_fd, K.KVM_SIGNAL_MSI, K.KvmMsi(
            address_lo=entry.address & 0xFFFF_FFFF, address_hi=entry.address >> 32,
            data=entry.data, flags=K.KVM_MSI_VALID_DEVID, devid=entry.devid)))


__all__ = ["KvmIrqchip", "MsiRouteEntry", "KVM_MAX_IRQ_ROUTES"]
