"""The kernel model's API fails like Linux, with nothing half-changed.

Expected values here come from Linux's sources (lib/bitmap.c bitmap_parse,
kernel/irq/proc.c write_irq_affinity / show_interrupts, drivers/pci/msi of
6.1 for pci_alloc_irq_vectors, 6.2+ for pci_msix_alloc_irq_at / free_irq)
and from a real arm64 Linux 6.1 guest's /proc/interrupts (tests/data), never
from the model's own code.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pymsi.hw import pci as P
from pymsi.kernel.base import KernelError, parse_cpumask
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.msi import MsiType
from pymsi.machine import ArmVirt, X86Pc
from pymsi.testing.strategies import proc_inputs

from kernel_util import errno_of

EINVAL, ENOENT, EIO, EBUSY, ENOSPC, ERANGE, EOVERFLOW = (
    errno.EINVAL, errno.ENOENT, errno.EIO, errno.EBUSY, errno.ENOSPC, errno.ERANGE,
    errno.EOVERFLOW)
ENOTSUPP = 524                      # include/linux/errno.h (kernel-internal)
DATA = Path(__file__).parent / "data" / "arm64_smmuv3_s1.json"




# -- bitmap_parse(): a reference written from lib/bitmap.c's rules --------------------------

SEPARATORS = frozenset(b", \t\n\v\f\r\xa0")       # ',' and the kernel's isspace() bytes
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
GROUP = re.compile(rb"[0-9a-fA-F]{1,8}")


def ref_bitmap_parse(data: bytes, nbits: int):
    """Linux's answer for ``data`` as a bitmap of ``nbits``: a frozenset of bit
    numbers, or the errno name.

    The text ends at a newline or NUL.  Reading from the right: skip any run
    of separators; if anything is left, it starts a 32-bit group (more
    groups than nbits needs: EOVERFLOW); a group is 1-8 hex digits (none:
    EINVAL); after it comes the start, a separator, or — only after a full 8
    digits — one more byte, which is EOVERFLOW if it is a hex digit and
    otherwise silently dropped; any other byte after a shorter group is
    EINVAL.  Finally bits at or above nbits are EOVERFLOW.
    """
    data = re.split(rb"[\n\x00]", data, maxsplit=1)[0]
    rev, pos, groups = data[::-1], 0, []
    while True:
        while pos < len(rev) and rev[pos] in SEPARATORS:
            pos += 1
        if pos == len(rev):
            break
        if len(groups) == (nbits + 31) // 32:
            return "EOVERFLOW"
        m = GROUP.match(rev, pos)
        if m is None:
            return "EINVAL"
        digits = m.group(0)
        pos = m.end()
        if pos < len(rev) and rev[pos] not in SEPARATORS:
            if len(digits) < 8:
                return "EINVAL"
            if rev[pos] in HEX_DIGITS:
                return "EOVERFLOW"
            pos += 1
        groups.append(int(digits[::-1], 16))
    value = sum(g << (32 * i) for i, g in enumerate(groups))
    if value >> nbits:
        return "EOVERFLOW"
    return frozenset(b for b in range(nbits) if value >> b & 1)


def model_parse(data, nbits):
    try:
        return parse_cpumask(data, nbits)
    except KernelError as e:
        return errno.errorcode[e.errno]


ALL512 = frozenset(range(512))
# (input, nbits, Linux's answer): worked out by hand from bitmap_parse().
BITMAP_PARSE_CASES = [
    ("1", 512, {0}),
    ("f", 512, {0, 1, 2, 3}),
    ("A", 512, {1, 3}),                               # upper case is hex too
    ("00000001", 512, {0}),                           # leading zeros within 8 digits
    ("000000001", 512, "EOVERFLOW"),                  # a ninth digit, even a zero
    ("123456789", 512, "EOVERFLOW"),
    ("1,00000000", 512, {32}),
    ("1,,2", 512, {32, 1}),                           # empty groups are allowed
    (",44", 512, {2, 6}),
    (",", 512, set()),
    ("", 512, set()),
    ("  1  ", 512, {0}),                              # leading/trailing whitespace
    ("1 2", 512, {32, 1}),                            # whitespace separates groups too
    ("\t1\r", 512, {0}),
    ("1\n", 512, {0}),
    ("1\nzz", 512, {0}),                              # a newline ends the input
    ("1\x00zz", 512, {0}),                            # so does a NUL
    ("\nzz", 512, set()),
    ("0x1", 512, "EINVAL"),                           # no 0x prefix...
    ("0x00000001", 512, {0}),                         # ...except after 8 digits, dropped
    ("x00000001", 512, {0}),
    ("1g00000001", 512, {32, 0}),                     # the dropped byte can be anything
    ("g", 512, "EINVAL"),
    ("1g", 512, "EINVAL"),
    ("-1", 512, "EINVAL"),
    ("+1", 512, "EINVAL"),
    ("1;2", 512, "EINVAL"),
    ("1,g2", 512, "EINVAL"),
    ("zz,123456789", 512, "EOVERFLOW"),               # read from the right: last group first
    ("123456789,zz", 512, "EINVAL"),
    (",".join(["0"] * 17), 512, "EOVERFLOW"),         # 17 groups for 512 bits, even zeros
    (",".join(["ffffffff"] * 16), 512, ALL512),
    ("1" + ",00000000" * 16, 512, "EOVERFLOW"),       # CPU 512
    ("f", 4, {0, 1, 2, 3}),
    ("10", 4, "EOVERFLOW"),                           # bit 4 of a 4-bit map
    ("0,1", 4, "EOVERFLOW"),                          # a second group for 4 bits
    ("ff,ffffffff", 40, frozenset(range(40))),
    ("1ff,ffffffff", 40, "EOVERFLOW"),
    ("ffffffff,ffffffff", 64, frozenset(range(64))),
    ("\u00a01", 512, "EINVAL"),                       # a str is UTF-8: 0xC2 is no space
    (b"\xa01", 512, {0}),                             # but byte 0xA0 is (lib/ctype.c)
    (b"1\xa0", 512, {0}),
    (b"\xff1", 512, "EINVAL"),
]


@pytest.mark.parametrize(("text", "nbits", "linux"), BITMAP_PARSE_CASES)
def test_parse_cpumask_matches_bitmap_parse_cases(text, nbits, linux):
    want = frozenset(linux) if isinstance(linux, (set, frozenset)) else linux
    assert model_parse(text, nbits) == want
    data = text.encode() if isinstance(text, str) else text
    assert ref_bitmap_parse(data, nbits) == want          # the reference agrees too


def cpumask_texts():
    """Valid masks (groups of 1-8 digits, mixed case and separators), then mutated byte
    by byte: inserted, deleted and replaced bytes, long groups, prefixes and junk after
    a newline (pymsi.testing's /proc inputs)."""
    return proc_inputs()


@given(data=cpumask_texts(), nbits=st.sampled_from([1, 4, 31, 32, 40, 64, 100, 512]))
def test_parse_cpumask_agrees_with_reference(data, nbits):
    want = ref_bitmap_parse(data, nbits)
    event(f"answer: {want if isinstance(want, str) else 'mask'}")
    assert model_parse(data, nbits) == want
    if isinstance(data, bytes) and data.isascii():
        assert model_parse(data.decode(), nbits) == want    # str and bytes alike


# -- /proc ------------------------------------------------------------------------------------

def arm(devices=({"msix": 4},), **kw):
    m = ArmVirt(devices=list(devices), smmu=None, **kw)
    return m, m.boot()


def test_proc_irq_paths_that_name_no_file_are_enoent():
    m, k = arm()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    irq = drv.irqs[0]
    for path in ["/proc/irq/abc/smp_affinity", f"/proc/irq/0{irq}/smp_affinity",
                 f"/proc/irq/+{irq}/smp_affinity", f"/proc/irq/-{irq}/smp_affinity",
                 f"/proc/irq/{irq}.0/smp_affinity", f"/proc/irq/ {irq}/smp_affinity",
                 "/proc/irq/9999/smp_affinity", f"/proc/irq/{irq}/no_such_file",
                 f"/proc/irq/{irq}", "/proc/irq//smp_affinity", "", "proc/irq/1/smp_affinity",
                 f"/proc/irq/{irq}/smp_affinity/x", "/proc/interrupts_x"]:
        assert errno_of(k.proc_write, path, "1") == ENOENT, path
    # Path resolution collapses slashes and ".": these name the real file.
    k.proc_write(f"//proc/./irq//{irq}/smp_affinity", "2")
    assert k.proc_read(f"/proc/irq/{irq}/smp_affinity") == "2\n"


def test_proc_irq_directory_appears_when_first_requested():
    m, k = arm()
    dev = k.pci.devices[0]
    dev.enable_device()
    dev.set_master()
    n = k.msi.alloc_irq_vectors(dev, 1, 2, MsiType.MSIX)
    irq = k.msi.irq_vector(dev, 0)
    assert n == 2
    assert errno_of(k.proc_write, f"/proc/irq/{irq}/smp_affinity", "2") == ENOENT
    k.irq.request_irq(irq, lambda i, c: 1, "x")
    k.irq.free_irq(irq)
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "2")        # stays until the desc goes
    assert k.proc_read(f"/proc/irq/{irq}/smp_affinity") == "2\n"
    k.msi.free_irq_vectors(dev)
    assert errno_of(k.proc_write, f"/proc/irq/{irq}/smp_affinity", "2") == ENOENT


def test_smp_affinity_write_order_and_bitmap_parse_at_proc():
    m, k = arm(devices=({"msix": 4}, {"msix": 4}))
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    managed = MsiCountingDriver(k, k.pci.devices[1], 4, flags=MsiType.MSIX | MsiType.AFFINITY)
    irq = drv.irqs[0]
    path = f"/proc/irq/{irq}/smp_affinity"
    # EIO is checked before the text is even parsed.
    assert errno_of(k.proc_write, f"/proc/irq/{managed.irqs[0]}/smp_affinity", "zz") == EIO
    cases = [("1,,2", None, "2"),              # CPUs 1 and 33: CPU 1 is online, fine
             ("0x00000004", None, "4"), (" 8\n", None, "8"), ("", EINVAL, None),
             (",", EINVAL, None), ("10", EINVAL, None), ("0x1", EINVAL, None),
             ("123456789", EOVERFLOW, None), ("1" + ",00000000" * 16, EOVERFLOW, None)]
    for text, err, shown in cases:
        before = k.proc_read(path)
        assert errno_of(k.proc_write, path, text) == err, text
        assert k.proc_read(path) == (before if err else shown + "\n"), text


def test_irq_set_affinity_with_a_non_cpu_is_einval_and_changes_nothing():
    m, k = arm()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    irq = drv.irqs[0]
    common = k.irq.desc(irq).irq_data.common
    before = (common.affinity, common.effective_affinity)
    for mask in [{-1}, {-1, 0}, {512}, {1 << 40}, set(), {4, 5}, {"0"}, {0.5}, None, 3]:
        assert errno_of(k.irq.set_affinity, irq, mask) == EINVAL, mask
        assert (common.affinity, common.effective_affinity) == before
    assert errno_of(k.irq.set_affinity, 9999, {0}) == EINVAL
    assert errno_of(k.irq.set_affinity, [irq], {0}) == EINVAL      # not an IRQ number
    assert errno_of(k.proc_write, f"/proc/irq/{irq}/smp_affinity", 5) == EINVAL   # not text
    k.irq.set_affinity(irq, {2, 7})                  # CPU 7 is offline, CPU 2 is used
    assert common.effective_affinity == {2}


# -- freeing ----------------------------------------------------------------------------------

def device_state(m, k, i):
    dev, fn = k.pci.devices[i], m.functions[i]
    cfg = bytes(dev.cfg_read(off, 1) for off in range(0x100))
    table = [fn.msix_entry(v) for v in range(dev.msix_vectors())]
    return cfg, table, dict(dev.msi_descs), dev.msi_enabled, dev.msix_enabled


def test_freeing_vectors_twice_or_never_allocated_is_a_no_op():
    m, k = arm(devices=({"msix": 4}, {"msi": 4}))
    for i in (0, 1):
        before = device_state(m, k, i)
        k.msi.free_irq_vectors(k.pci.devices[i])            # never had any
        assert device_state(m, k, i) == before
    drv = MsiCountingDriver(k, k.pci.devices[0], 4)
    drv.remove()
    after_first = device_state(m, k, 0)
    k.msi.free_irq_vectors(k.pci.devices[0])
    assert device_state(m, k, 0) == after_first
    assert k.its.devices == {}


@pytest.mark.parametrize("spec", [{"msix": 4}, {"msi": 4}])
def test_free_vectors_with_a_handler_still_requested_frees_everything(spec):
    m, k = arm(devices=(spec,))
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 4)
    for irq in drv.irqs[1:]:
        k.irq.free_irq(irq, drv.irqs.index(irq))            # vector 0 keeps its handler
    k.msi.free_irq_vectors(dev)
    # Linux 6.1 frees all of it (the handler goes with the descriptor) and warns.
    assert dev.msi_descs == {} and not dev.msi_enabled and not dev.msix_enabled
    assert all(irq not in k.irq.descs for irq in drv.irqs)
    assert k.its.devices == {}
    assert any("WARNING" in line and f"irq/{drv.irqs[0]}" in line for line in k.log)
    if dev.msix_cap is not None:                            # MSI-X Enable is bit 15
        assert not dev.cfg_read(dev.msix_cap + 2, 2) & 1 << 15
    else:                                                   # MSI Enable is bit 0
        assert not dev.cfg_read(dev.msi_cap + 2, 2) & 1
    assert not dev.cfg_read(P.COMMAND, 2) & P.CMD_INTX_DISABLE     # INTx back on
    m.functions[0].notify(0)
    k.handle_interrupts()
    assert drv.fired[0] == []
    again = MsiCountingDriver(k, dev, 4)                    # and the device is reusable
    m.functions[0].notify(3)
    k.handle_interrupts()
    assert len(again.fired[3]) == 1


def test_pci_msix_free_irq_refuses_msi_vectors():
    m, k = arm(devices=({"msi": 4},))
    drv = MsiCountingDriver(k, k.pci.devices[0], 4, flags=MsiType.MSI)
    dev = k.pci.devices[0]
    before = device_state(m, k, 0)
    for index in (0, 1, 3, 7, -1):
        assert errno_of(k.msi.msix_free_irq, dev, index) == EINVAL
        assert device_state(m, k, 0) == before
    assert sum("WARNING" in line for line in k.log) == 5
    for v in range(4):                                      # every MSI vector still works
        m.functions[0].notify(v)
        k.handle_interrupts()
        assert len(drv.fired[v]) == 1


def test_pci_msix_free_irq_of_a_free_index_does_nothing_and_realloc_after_last():
    m, k = arm()
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 1)
    k.irq.free_irq(drv.irqs[0], 0)
    before = device_state(m, k, 0)
    k.msi.msix_free_irq(dev, 3)                             # nothing there
    assert device_state(m, k, 0) == before
    k.msi.msix_free_irq(dev, 0)                             # the last vector: ITS device goes
    assert dev.msi_descs == {} and dev.msix_enabled and k.its.devices == {}
    index, virq = k.msi.msix_alloc_irq_at(dev)              # msi_prepare again
    got = []
    k.irq.request_irq(virq, lambda i, c: got.append(k.current_cpu) or 1, "dyn")
    m.functions[0].notify(index)
    k.handle_interrupts()
    assert index == 0 and len(got) == 1


def test_pci_msix_alloc_irq_at_errors():
    m, k = arm(devices=({"msix": 4}, {"msi": 4}))
    dev, msi_dev = k.pci.devices
    assert errno_of(k.msi.msix_alloc_irq_at, dev) == ENOTSUPP          # MSI-X not on
    MsiCountingDriver(k, msi_dev, 2, flags=MsiType.MSI)
    assert errno_of(k.msi.msix_alloc_irq_at, msi_dev) == ENOTSUPP
    MsiCountingDriver(k, dev, 2)
    before = device_state(m, k, 0)
    for index, aff, err in [(4, None, ERANGE), (1 << 20, None, ERANGE), (1, None, EBUSY),
                            (2, {-1}, EINVAL), (2, {9}, EINVAL), (2, set(), EINVAL)]:
        assert errno_of(k.msi.msix_alloc_irq_at, dev, index, aff) == err, (index, aff)
        assert device_state(m, k, 0) == before
    k.msi.msix_alloc_irq_at(dev, 2)
    k.msi.msix_alloc_irq_at(dev, -1)                        # MSI_ANY_INDEX: entry 3
    assert sorted(dev.msi_descs) == [0, 1, 2, 3]
    assert errno_of(k.msi.msix_alloc_irq_at, dev) == EBUSY                 # table full


# -- pci_alloc_irq_vectors --------------------------------------------------------------------

BOTH = MsiType.MSIX | MsiType.MSI
# (device spec, min, max, flags, Linux 6.1's answer: nvec or errno), derived from
# pci_alloc_irq_vectors_affinity -> __pci_enable_msix_range / __pci_enable_msi_range.
ALLOC_CASES = [
    ({"msix": 4}, 3, 2, BOTH, ERANGE),                    # both paths: ERANGE
    ({"msix": 4}, 3, 2, MsiType.MSIX, ERANGE),
    ({"msi": 4}, 3, 2, MsiType.MSI, ERANGE),
    ({"msix": 4}, 0, 0, BOTH, EINVAL),                    # nothing asked for
    ({"msix": 4}, 0, 0, MsiType.MSIX, EINVAL),
    ({"msix": 4}, 1, 0, MsiType.MSIX, ERANGE),
    ({"msix": 4}, 0, 2, MsiType.MSIX, 2),                 # MSI-X takes min 0
    ({"msi": 4}, 0, 2, MsiType.MSI, EINVAL),              # MSI does not
    ({"msix": 4}, 1, 4, MsiType(0), ENOSPC),              # neither mode asked for
    ({"msix": 4}, 1, 4, MsiType.AFFINITY, ENOSPC),
    ({"msix": 4}, 1, 8, BOTH, 4),                         # capped at the table
    ({"msix": 4}, 5, 8, MsiType.MSIX, ENOSPC),
    ({"msix": 4}, 5, 8, BOTH, EINVAL),                    # no MSI capability: last error
    ({"msi": 4}, 1, 4, MsiType.MSIX, EINVAL),             # no MSI-X capability
    ({"msi": 4}, 1, 4, BOTH, 4),
    ({"msi": 4}, 1, 3, MsiType.MSI, 3),                   # MSI need not be a power of 2
    ({"msi": 4}, 5, 8, MsiType.MSI, ENOSPC),
    ({"msi": 2}, 1, 8, MsiType.MSI, 2),
    ({"msix": 8}, 1, 8, MsiType.MSIX | MsiType.AFFINITY, 4),   # one per CPU
    ({"msix": 8}, 5, 8, MsiType.MSIX | MsiType.AFFINITY, ENOSPC),
    ({"msix": 4}, -1, 2, MsiType.MSIX, 2),                # (unsigned)-1 is -1 as an int
    ({"msix": 4}, 1, -1, MsiType.MSIX, ERANGE),
    ({"msix": 4}, 1, (1 << 32) + 2, MsiType.MSIX, 2),     # unsigned int: modulo 2^32
]


@pytest.mark.parametrize(("spec", "lo", "hi", "flags", "linux"), ALLOC_CASES)
def test_pci_alloc_irq_vectors_arguments(spec, lo, hi, flags, linux):
    m, k = arm(devices=(spec,))
    dev = k.pci.devices[0]
    dev.enable_device()
    before = device_state(m, k, 0)
    descs = dict(k.irq.descs)
    try:
        got = k.msi.alloc_irq_vectors(dev, lo, hi, flags)
    except KernelError as e:
        assert e.errno == linux
        assert device_state(m, k, 0) == before and k.irq.descs == descs
        assert k.its.devices == {}
        return
    assert got == linux and len(dev.msi_descs) == got


def test_second_allocation_is_refused_in_linuxs_order():
    m, k = arm(devices=({"msix": 4, "msi": 4},))
    dev = k.pci.devices[0]
    MsiCountingDriver(k, dev, 2, flags=MsiType.MSIX)
    before = device_state(m, k, 0)
    assert errno_of(k.msi.alloc_irq_vectors, dev, 1, 2, MsiType.MSIX) == EINVAL
    assert errno_of(k.msi.alloc_irq_vectors, dev, 1, 2, MsiType.MSI) == EINVAL
    assert errno_of(k.msi.alloc_irq_vectors, dev, 3, 2, MsiType.MSIX) == ERANGE
    assert errno_of(k.msi.alloc_irq_vectors, dev, 3, 2, MsiType.MSI) == EINVAL  # MSI-X on first
    assert device_state(m, k, 0) == before


def test_failed_enable_puts_everything_back():
    """An allocation that fails half way (the ITS runs out of events after the
    first vectors) leaves the device and the ITS exactly as they were."""
    m, k = arm(devices=({"msix": 8},))
    dev = k.pci.devices[0]
    dev.enable_device()
    before = device_state(m, k, 0)
    real_prepare = k.msi.parent_prepare

    def small_itt(d, nvec):
        itsdev = real_prepare(d, nvec)
        itsdev.nr_lpis = 3                                  # only 3 events usable
        return itsdev

    k.msi.parent_prepare = small_itt
    assert errno_of(k.msi.alloc_irq_vectors, dev, 8, 8, MsiType.MSIX) == ENOSPC
    assert device_state(m, k, 0) == before
    assert k.its.devices == {} and k.irq.descs == {}
    k.msi.parent_prepare = real_prepare
    assert MsiCountingDriver(k, dev, 8).nvec == 8


# -- /proc/interrupts -------------------------------------------------------------------------

def test_proc_interrupts_matches_a_real_arm64_guest():
    real = json.loads(DATA.read_text())["proc_interrupts"]["after-second"]
    m, k = arm(devices=({"msix": 3}, {"msix": 5}))
    k.irq._next_irq = 22                                    # where the guest's MSIs began
    names = [["virtio0-config", "virtio0-input"],
             ["virtio1-config"] + [f"virtio1-req.{q}" for q in range(4)]]
    for dev, n in zip(k.pci.devices, names, strict=True):
        dev.enable_device()
        k.msi.alloc_irq_vectors(dev, len(n), len(n), MsiType.MSIX)
        for v, name in enumerate(n):
            k.irq.request_irq(k.msi.irq_vector(dev, v), lambda i, c: 1, name)
    ours = k.irq.proc_interrupts()
    assert ours[0] == real[0]                               # the CPU header, as padded
    real_msi = [line for line in real if "ITS-MSI" in line]
    assert len(real_msi) == len(ours) - 1 == 7
    for want in real_msi:                                   # counts aside: the guest's
        irq = int(want.split(":")[0])
        counts = [int(c) for c in want.split(":")[1].split()[:4]]
        k.irq.desc(irq).kstat = dict(enumerate(counts))
    assert k.irq.proc_interrupts()[1:] == real_msi
    assert k.proc_read("/proc/interrupts") == "".join(x + "\n" for x in [real[0]] + real_msi)


@pytest.mark.parametrize("remapping", [False, True])
def test_proc_interrupts_on_x86(remapping):
    m = X86Pc(devices=[{"msix": 2}], remapping=remapping)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2, name="nic")
    m.functions[0].notify(1)
    k.handle_interrupts()
    cpu = next(iter(k.irq.desc(drv.irqs[1]).irq_data.common.effective_affinity))
    counts = ["         0 "] * 4
    counts[cpu] = "         1 "
    chip = " IR-PCI-MSI" if remapping else "  PCI-MSI"
    # show_interrupts() without GENERIC_IRQ_SHOW_LEVEL: "-edge" and the handler name;
    # the hwirq is 00:01.0 << 11 | index = 0x4000 | 1.
    want = f"  {drv.irqs[1]}: " + "".join(counts) + chip + " 16385-edge      nic-1"
    lines = k.irq.proc_interrupts()
    assert lines[0] == "           CPU0       CPU1       CPU2       CPU3       "
    assert want in lines
    assert not any("Edge" in line for line in lines)


# -- a state machine over the whole API -------------------------------------------------------

def kernel_state(m, k):
    """Everything a kernel call may change: genirq, MSI descriptors, the devices'
    configuration space and MSI-X tables, and the parent's mappings."""
    descs = {}
    for irq, desc in k.irq.descs.items():
        d = desc.irq_data
        descs[irq] = (
            tuple((a.name, a.dev_id) for a in desc.actions), desc.depth,
            desc.proc_registered, d.common.affinity, d.common.effective_affinity,
            d.common.activated, d.common.started, d.common.managed,
            tuple((lv.domain.name, lv.hwirq) for lv in d.levels()))
    devs = []
    for i, dev in enumerate(k.pci.devices):
        msi = {idx: (x.irq, x.msg, x.is_msix, x.managed, x.affinity, x.msix_ctrl)
               for idx, x in dev.msi_descs.items()}
        devs.append((device_state(m, k, i)[:2], msi, dev.msi_enabled, dev.msix_enabled,
                     dev.msi_parent_data is not None))
    parent = None
    if getattr(k, "its", None) is not None:
        parent = ({d: (x.nr_lpis, x.lpi_base, dict(x.events), x.users)
                   for d, x in k.its.devices.items()}, dict(k.its.load))
    else:
        parent = {c: dict(t) for c, t in k.vector.vector_irq.items()}
        if k.ir is not None:
            parent = (parent, sorted(k.ir._used), {b: list(v) for b, v in k.ir._blocks.items()},
                      k.ram.read(k.ir.table, 16 * k.ir.entries))
    return descs, devs, parent


ALLOWED = {
    "alloc": {EINVAL, ERANGE, ENOSPC},
    "free_vectors": set(),
    "request": {EINVAL, EBUSY},
    "free_irq": {EINVAL, ENOENT},
    "alloc_at": {ENOTSUPP, ERANGE, EBUSY, EINVAL, ENOSPC},
    "free_at": {EINVAL},
    "affinity": {EINVAL},
    # irq_try_set_affinity() turns EBUSY (vector move still in progress) into a pending
    # move only when not forced: a forced one gets the EBUSY.
    "affinity_forced": {EINVAL, EBUSY},
    "proc": {ENOENT, EIO, EINVAL, EOVERFLOW},
}

FLAGS = st.sampled_from([MsiType.MSIX, MsiType.MSI, BOTH, MsiType(0), MsiType.AFFINITY,
                         MsiType.MSIX | MsiType.AFFINITY, MsiType.MSI | MsiType.AFFINITY,
                         BOTH | MsiType.AFFINITY])
IRQS = st.integers(0, 40)          # mostly an existing interrupt, sometimes none
MASKS = st.one_of(st.frozensets(st.integers(0, 5), max_size=3),
                  st.sampled_from([frozenset({-1}), frozenset({512}), frozenset({0, -1})]))
PROC_TEXTS = st.one_of(st.sampled_from(["1", "2", "4", "8", "f", "0", "", "1,,2", "10",
                                        "0x1", "123456789", "zz", " 2\n", "1" + ",0" * 16]),
                       cpumask_texts())


class KernelApi(RuleBasedStateMachine):
    """Random sequences of the kernel's MSI / genirq API with valid and invalid
    arguments: each call succeeds or fails with an errno Linux uses for that
    call, and a failed call leaves the kernel and the hardware as they were."""

    def __init__(self):
        super().__init__()
        self.m, self.k = self.make()
        for dev in self.k.pci.devices:
            dev.enable_device()
            dev.set_master()

    def make(self):
        raise NotImplementedError

    def call(self, kind, fn, *args):
        before = kernel_state(self.m, self.k)
        try:
            result = fn(*args)
        except KernelError as e:
            event(f"{kind}: {errno.errorcode.get(e.errno, 'ENOTSUPP')}")
            assert e.errno in ALLOWED[kind], (kind, args, e)
            assert kernel_state(self.m, self.k) == before, (kind, args, e)
            return None
        event(f"{kind}: ok")
        return result

    devs = st.integers(0, 1)

    def irq(self, sel):
        """An existing interrupt number for most ``sel``, else one that is not."""
        irqs = sorted(self.k.irq.descs)
        if irqs and sel < 32:
            return irqs[sel % len(irqs)]
        return [0, max(irqs, default=0) + 1 + sel % 3, -1][sel % 3]

    @initialize(i=devs, n=st.integers(0, 4))
    def bound_driver(self, i, n):
        if n:
            MsiCountingDriver(self.k, self.k.pci.devices[i], n, name="drv")

    @rule(i=devs, lo=st.one_of(st.integers(1, 4), st.integers(-1, 6)),
          hi=st.one_of(st.integers(1, 4), st.integers(-1, 9)), flags=FLAGS)
    def alloc(self, i, lo, hi, flags):
        dev = self.k.pci.devices[i]
        n = self.call("alloc", self.k.msi.alloc_irq_vectors, dev, lo, hi, flags)
        if n is not None:
            # irq_calc_affinity_vectors() takes unsigned counts: with PCI_IRQ_AFFINITY a
            # max_vecs of -1 is 0xffffffff and the CPU count bounds the answer instead.
            bound = hi if hi >= 0 else self.k.ncpus
            assert len(dev.msi_descs) == n and n <= bound and n >= min(lo, n)
            assert dev.msi_enabled != dev.msix_enabled

    @rule(i=devs)
    def free_vectors(self, i):
        dev = self.k.pci.devices[i]
        self.call("free_vectors", self.k.msi.free_irq_vectors, dev)
        assert dev.msi_descs == {} and not dev.msi_enabled and not dev.msix_enabled

    @rule(sel=IRQS, name=st.sampled_from(["a", "b"]))
    def request(self, sel, name):
        self.call("request", self.k.irq.request_irq, self.irq(sel), lambda i, c: 1, name, name)

    @rule(sel=IRQS, name=st.sampled_from(["a", "b", None]))
    def free_irq(self, sel, name):
        irq = self.irq(sel)
        desc = self.k.irq.descs.get(irq)
        if desc is not None and desc.actions and name is None:
            name = desc.actions[0].dev_id                   # often the right dev_id
        self.call("free_irq", self.k.irq.free_irq, irq, name)

    @rule(i=devs, index=st.one_of(st.none(), st.integers(-1, 9)),
          aff=st.one_of(st.none(), MASKS))
    def alloc_at(self, i, index, aff):
        self.call("alloc_at", self.k.msi.msix_alloc_irq_at, self.k.pci.devices[i], index, aff)

    @rule(i=devs, index=st.integers(-1, 9))
    def free_at(self, i, index):
        self.call("free_at", self.k.msi.msix_free_irq, self.k.pci.devices[i], index)

    @rule(sel=IRQS, mask=MASKS, force=st.booleans())
    def affinity(self, sel, mask, force):
        self.call("affinity_forced" if force else "affinity", self.k.irq.set_affinity,
                  self.irq(sel), mask, force)

    @rule(sel=IRQS, text=PROC_TEXTS,
          leaf=st.sampled_from(["smp_affinity", "smp_affinity", "effective_affinity", "x"]))
    def proc(self, sel, text, leaf):
        self.call("proc", self.k.proc_write, f"/proc/irq/{self.irq(sel)}/{leaf}", text)

    @rule(i=devs, v=st.integers(0, 7))
    def fire(self, i, v):
        self.m.functions[i].notify(v)
        self.k.handle_interrupts()

    @invariant()
    def descriptors_are_consistent(self):
        for dev in self.k.pci.devices:
            for index, desc in dev.msi_descs.items():
                assert desc.msi_index == index
                assert self.k.irq.desc(desc.irq).irq_data.common.msi_desc is desc
            if dev.msi_descs:
                assert dev.msi_enabled or dev.msix_enabled
        lines = self.k.irq.proc_interrupts()
        assert len(lines) == 1 + sum(
            1 for d in self.k.irq.descs.values() if d.actions or d.count)


class ArmKernelApi(KernelApi):
    def make(self):
        m = ArmVirt(devices=[{"msix": 4}, {"msi": 4}], smmu=None)
        return m, m.boot()


class X86KernelApi(KernelApi):
    remapping = False

    def make(self):
        m = X86Pc(devices=[{"msix": 4}, {"msi": 4}], remapping=self.remapping)
        return m, m.boot()


class X86IrKernelApi(X86KernelApi):
    remapping = True


# 30 runs of 25 steps on the default profile (100 examples), scaled up on "deep".
_sm = settings(max_examples=max(10, settings().max_examples * 3 // 10), stateful_step_count=25)
TestArmKernelApi = ArmKernelApi.TestCase
TestArmKernelApi.settings = _sm
TestX86KernelApi = X86KernelApi.TestCase
TestX86KernelApi.settings = _sm
TestX86IrKernelApi = X86IrKernelApi.TestCase
TestX86IrKernelApi.settings = _sm


def test_driver_probe_failure_leaves_nothing_behind():
    m, k = arm()
    dev = k.pci.devices[0]
    real_request = k.irq.request_irq
    calls = []

    def flaky(irq, handler, name, dev_id=None):
        calls.append(irq)
        if len(calls) == 3:
            raise KernelError(EBUSY, "third request fails")
        real_request(irq, handler, name, dev_id)

    k.irq.request_irq = flaky
    with pytest.raises(KernelError):
        MsiCountingDriver(k, dev, 4)
    assert dev.msi_descs == {} and k.irq.descs == {} and k.its.devices == {}
    assert not dev.msix_enabled


def test_msi_vectors_start_masked_and_are_unmasked_on_request_and_free():
    m, k = arm(devices=({"msi": 4, "msi_mask": True},))
    dev = k.pci.devices[0]
    dev.enable_device()
    dev.set_master()
    mask_reg = dev.msi_cap + 0x10                               # 64-bit MSI: Mask Bits at +0x10
    assert dev.cfg_read(dev.msi_cap + 2, 2) & (1 << 7 | 1 << 8) == 1 << 7 | 1 << 8
    assert k.msi.alloc_irq_vectors(dev, 2, 2, MsiType.MSI) == 2
    assert dev.cfg_read(mask_reg) == 0xF                        # all 4 the function has
    got = []
    k.irq.request_irq(k.msi.irq_vector(dev, 1), lambda i, c: got.append(i) or 1, "v1")
    assert dev.cfg_read(mask_reg) == 0xD                        # vector 1 unmasked
    m.functions[0].notify(1)
    k.handle_interrupts()
    assert len(got) == 1
    k.irq.free_irq(k.msi.irq_vector(dev, 1))
    k.msi.free_irq_vectors(dev)
    assert dev.cfg_read(mask_reg) == 0                          # returned unmasked
