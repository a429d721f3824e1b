"""Helpers shared by the kernel-model tests."""

from __future__ import annotations

from pymsi.kernel.base import KernelError


def errno_of(fn, *args, **kw):
    """None if the call succeeds, else the KernelError's errno (any other
    exception fails the test)."""
    try:
        fn(*args, **kw)
    except KernelError as e:
        return e.errno
    return None


class Dev:
    """A PCI function as the IOMMU core sees it (requester ID, DMA mask, group)."""

    is_pci = True

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.dma_mask = (1 << 64) - 1
        self.iommu_group = None

    def __hash__(self) -> int:
        return hash(("dev", self.rid))

    def __repr__(self) -> str:
        return f"dev {self.rid:#06x}"


def examples(n: int) -> int:
    """``n`` examples under the default hypothesis profile, proportionally more under
    ``HYPOTHESIS_PROFILE=deep`` (for tests that fix a small max_examples of their own)."""
    from hypothesis import settings

    return max(1, n * settings.default.max_examples // 100)
