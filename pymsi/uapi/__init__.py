"""The user/kernel contract: Linux UAPI constants and structures as Python.

``from pymsi.uapi import iommufd, vfio, kvm`` gives the names of
``include/uapi/linux/iommufd.h``, ``vfio.h`` and ``kvm.h`` (with arm64's
``asm/kvm.h``): ioctl numbers, flags, and one class per argument structure named
by its C name in CamelCase with the C member names.  Userspace (a VMM or a test)
builds an argument, passes it to ``fd.ioctl(NUMBER, arg)`` of the kernel model,
and reads ``out_*`` members filled in place.  The layout machinery is in
:mod:`pymsi.uapi._struct`, the request encoding in :mod:`pymsi.uapi._ioctl`.
Each module's ``NOT_UPSTREAM`` lists the names that are this project's (or an
unmerged series') rather than Linux's.
"""

from typing import TypeAlias

from . import iommufd, kvm, vfio
from ._ioctl import _IO, _IOC_DIR, _IOC_NR, _IOC_SIZE, _IOC_TYPE, _IOR, _IOW, _IOWR
from ._struct import Array, CType, Flex, Struct, Union

#: What userspace passes as ioctl(2)'s third argument: an integer (a value or a flag, as in
#: ``KVM_CREATE_VCPU``'s vCPU index), a UAPI argument structure the kernel reads and fills in
#: place (the pointer in C), or KVM_RUN's ``struct kvm_run`` (:class:`kvm.KvmRun`, the
#: model's stand-in for the page mapped from the vCPU fd: not a :class:`Struct`).
IoctlArg: TypeAlias = int | Struct | kvm.KvmRun

#: What ioctl(2) gives back: Linux's ``long`` (0, a new descriptor, a count); the model's
#: VFIO_DEVICE_GET_REGION_INFO also hands back the capability chain it would have copied to
#: the user's buffer, as bytes.
IoctlResult: TypeAlias = int | bytes


def ioctl_name(request: int) -> str:
    """The UAPI name of an ioctl request number (``hex(request)`` if it is not ours)."""
    for mod in (iommufd, vfio, kvm):
        if request in mod.IOCTLS:
            for name, value in vars(mod).items():
                if value == request and name.isupper() and not name.startswith(
                        ("IOMMUFD_CMD_", "VFIO_BASE", "VFIO_TYPE", "IOMMUFD_TYPE")):
                    return name
    return hex(request)


__all__ = [
    "iommufd", "vfio", "kvm", "ioctl_name", "IoctlArg", "IoctlResult", "Struct", "Union", "CType",
    "Array", "Flex",
    "_IO", "_IOR", "_IOW", "_IOWR", "_IOC_DIR", "_IOC_TYPE", "_IOC_NR", "_IOC_SIZE",
]
