"""poll(2) / epoll event bits (``include/uapi/linux/eventpoll.h``): what a file's
``poll`` returns and the keys a wait-queue wake-up carries."""

from __future__ import annotations

EPOLLIN = 0x0001
EPOLLPRI = 0x0002
EPOLLOUT = 0x0004
EPOLLERR = 0x0008
EPOLLHUP = 0x0010
EPOLLRDNORM = 0x0040

__all__ = ["EPOLLERR", "EPOLLHUP", "EPOLLIN", "EPOLLOUT", "EPOLLPRI", "EPOLLRDNORM"]
