"""IRQ bypass manager (virt/lib/irqbypass.c): pairs an interrupt producer with a consumer.

A producer (VFIO: one per MSI/MSI-X vector whose trigger is set, token = the
trigger eventfd's context, ``irq`` = the host IRQ) and a consumer (a KVM
irqfd, token = the same eventfd context) that register with the same token
are connected: both are stopped, the consumer's ``add_producer`` and the
producer's ``add_consumer`` run, both are started again.  Unregistering
either side disconnects the pair first (``del_producer`` / ``del_consumer``).

As in Linux the calls return an int, 0 or what failed (a negative errno, or
whatever a connect callback returned): their callers (VFIO, KVM) only log a
failure and go on without the bypass.  A side whose connect failed is not
registered.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .files import EventfdCtx
    from .kernel import Kernel

EINVAL, EBUSY = _errno.EINVAL, _errno.EBUSY


class IrqBypassProducer:
    """struct irq_bypass_producer: ``token`` to match, ``irq`` the host IRQ."""

    def __init__(self, token: EventfdCtx, irq: int,
                 add_consumer: Callable[[IrqBypassProducer, IrqBypassConsumer], int] | None = None,
                 del_consumer: Callable[[IrqBypassProducer, IrqBypassConsumer], None] | None = None
                 ) -> None:
        self.token = token
        self.irq = irq
        self.add_consumer = add_consumer
        self.del_consumer = del_consumer
        self.consumer: IrqBypassConsumer | None = None


class IrqBypassConsumer:
    """struct irq_bypass_consumer: ``token`` to match and the connect callbacks."""

    def __init__(self, token: EventfdCtx,
                 add_producer: Callable[[IrqBypassConsumer, IrqBypassProducer], int],
                 del_producer: Callable[[IrqBypassConsumer, IrqBypassProducer], None]) -> None:
        self.token = token
        self.add_producer = add_producer
        self.del_producer = del_producer
        self.producer: IrqBypassProducer | None = None


class IrqBypass:
    """The manager's two lists (one per kernel: :func:`irqbypass_of`)."""

    def __init__(self) -> None:
        self.producers: list[IrqBypassProducer] = []
        self.consumers: list[IrqBypassConsumer] = []
        # the same, by the identity of their token and by their own identity (each
        # registered token is unique on its side), so that a look-up does not scan
        self._prod_by_token: dict[int, IrqBypassProducer] = {}
        self._cons_by_token: dict[int, IrqBypassConsumer] = {}
        self._prod_token: dict[int, int] = {}          # id(producer) -> id(its token)
        self._cons_token: dict[int, int] = {}

    @staticmethod
    def _connect(prod: IrqBypassProducer, cons: IrqBypassConsumer) -> int:
        """__connect(): add_producer, then add_consumer (undone if that fails)."""
        ret = cons.add_producer(cons, prod) or 0
        if not ret and prod.add_consumer is not None:
            ret = prod.add_consumer(prod, cons) or 0
            if ret:
                cons.del_producer(cons, prod)
        if not ret:
            prod.consumer, cons.producer = cons, prod
        return ret

    @staticmethod
    def _disconnect(prod: IrqBypassProducer, cons: IrqBypassConsumer) -> None:
        """__disconnect(): del_producer, then del_consumer."""
        cons.del_producer(cons, prod)
        if prod.del_consumer is not None:
            prod.del_consumer(prod, cons)
        prod.consumer, cons.producer = None, None

    def register_producer(self, prod: IrqBypassProducer) -> int:
        """irq_bypass_register_producer(): -EINVAL without a token, -EBUSY for a token
        (or producer) already registered; connected to the consumer of its token."""
        if prod.token is None:
            return -EINVAL
        tok = id(prod.token)
        if id(prod) in self._prod_token or tok in self._prod_by_token:
            return -EBUSY
        cons = self._cons_by_token.get(tok)
        if cons is not None:
            ret = self._connect(prod, cons)
            if ret:
                return ret
        self.producers.append(prod)
        self._prod_by_token[tok] = prod
        self._prod_token[id(prod)] = tok
        return 0

    def unregister_producer(self, prod: IrqBypassProducer) -> None:
        """irq_bypass_unregister_producer(): disconnect, then forget it."""
        tok = self._prod_token.get(id(prod))
        if tok is None:
            return
        if prod.consumer is not None:
            self._disconnect(prod, prod.consumer)
        self.producers.remove(prod)
        del self._prod_token[id(prod)], self._prod_by_token[tok]

    def register_consumer(self, cons: IrqBypassConsumer) -> int:
        """irq_bypass_register_consumer(): as register_producer, from the other side."""
        if cons.token is None or cons.add_producer is None or cons.del_producer is None:
            return -EINVAL
        tok = id(cons.token)
        if id(cons) in self._cons_token or tok in self._cons_by_token:
            return -EBUSY
        prod = self._prod_by_token.get(tok)
        if prod is not None:
            ret = self._connect(prod, cons)
            if ret:
                return ret
        self.consumers.append(cons)
        self._cons_by_token[tok] = cons
        self._cons_token[id(cons)] = tok
        return 0

    def unregister_consumer(self, cons: IrqBypassConsumer) -> None:
        """irq_bypass_unregister_consumer()."""
        tok = self._cons_token.get(id(cons))
        if tok is None:
            return
        if cons.producer is not None:
            self._disconnect(cons.producer, cons)
        self.consumers.remove(cons)
        del self._cons_token[id(cons)], self._cons_by_token[tok]


def irqbypass_of(kernel: Kernel) -> IrqBypass:
    """The kernel's irq-bypass manager (``kernel.irqbypass``), made on first use."""
    mgr = getattr(kernel, "irqbypass", None)
    if mgr is None:
        mgr = kernel.irqbypass = IrqBypass()
    return mgr


__all__ = ["IrqBypass", "IrqBypassConsumer", "IrqBypassProducer", "irqbypass_of"]
