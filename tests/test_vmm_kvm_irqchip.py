"""The VMM's KVM routing table (QEMU's kvm_irqchip_*), against the KVM model.

Expected values from KVM's documented API (Documentation/virt/kvm/api.rst):
KVM_SET_GSI_ROUTING replaces the whole table; an MSI route with
KVM_MSI_VALID_DEVID carries the DeviceID the vITS translates; KVM_IRQFD injects the
GSI's route when the eventfd is signalled; KVM_SIGNAL_MSI injects once, and an
address outside every vITS frame is EINVAL.  The guest ITS mapping is made by the
guest-side driver of :class:`pymsi.vmmlib.KvmGuest`.
"""

from __future__ import annotations

import errno

from pymsi.vmm.kvm_irqchip import KvmIrqchip
from pymsi.vmmlib import RAM_SIZE, VITS_DOORBELL, KvmGuest, Vmm, errno_of

DEVID = 0x0008                           # the guest requester ID 00:01.0
VINTID = 8192 + 32


def guest():
    v = Vmm(design="sw-msi", smmu="s1", devices=[{"msix": 4}], ram_size=RAM_SIZE)
    g = KvmGuest(v, nvcpus=2)
    g.map_device(DEVID, {0: (VINTID, 0), 1: (VINTID + 1, 1)})
    return v, g


def test_routes_reach_kvm_only_at_commit_and_irqfds_inject_them():
    v, g = guest()
    chip = KvmIrqchip(v.k, g.vm, first_gsi=32)
    gsi = chip.add_msi_route(VITS_DOORBELL, 1, DEVID)
    assert gsi == 32 and chip.dirty
    efd = v.k.eventfd()
    chip.add_irqfd(efd, gsi)
    efd.write(1)                                   # no route in KVM yet: nothing
    assert g.kvm.vlpi_pending == []
    chip.commit_routes()
    assert not chip.dirty
    efd.write(1)
    assert g.kvm.vlpi_pending == [(VINTID + 1, 1)]
    # an update moves the GSI to event 0 (vCPU 0)
    chip.update_msi_route(gsi, VITS_DOORBELL, 0, DEVID)
    chip.commit_routes()
    efd.write(1)
    assert (VINTID, 0) in g.kvm.vlpi_pending
    # a second route gets the next GSI; releasing the first frees its number
    gsi2 = chip.add_msi_route(VITS_DOORBELL, 0, DEVID)
    assert gsi2 == 33
    chip.remove_irqfd(efd, gsi)
    chip.release_virq(gsi)
    assert chip.add_msi_route(VITS_DOORBELL, 1, DEVID) == 32
    assert errno_of(chip.update_msi_route, 40, VITS_DOORBELL, 0, DEVID) == errno.ENOENT


def test_send_msi_and_bad_routes():
    v, g = guest()
    chip = KvmIrqchip(v.k, g.vm)
    assert chip.send_msi(VITS_DOORBELL, 0, DEVID) == 1
    assert g.kvm.vlpi_pending == [(VINTID, 0)]
    assert errno_of(chip.send_msi, 0x1000_0000, 0, DEVID) == errno.EINVAL
    assert errno_of(chip.add_msi_route, 1 << 64, 0, DEVID) == errno.EINVAL
    assert errno_of(chip.add_msi_route, 0, -1, DEVID) == errno.EINVAL
    full = KvmIrqchip(v.k, g.vm, first_gsi=0, max_routes=1)
    full.add_msi_route(VITS_DOORBELL, 0, DEVID)
    assert errno_of(full.add_msi_route, VITS_DOORBELL, 0, DEVID) == errno.ENOSPC
