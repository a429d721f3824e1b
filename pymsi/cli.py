"""The ``pymsi`` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernel.kernel import Kernel
    from .machine import ArmVirt, VirtualMachine, X86Pc


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pymsi`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="pymsi",
        description="An executable model of MSI delivery for PCI devices assigned to VMs "
        "(Arm SMMUv3 + GICv3 ITS) with userspace-chosen per-vector MSI addresses.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"pymsi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="boot host + VMM + guest, fire every vector of an "
                          "assigned device and print each interrupt's path from the trace")
    from .demo import add_arguments

    add_arguments(demo)
    cmp = sub.add_parser("compare", help="run one scenario per MSI design x SMMU set-up and "
                         "print which invariant each design breaks, at which step")
    cmp.add_argument("--json", action="store_true", help="print the table as JSON")
    only = cmp.add_mutually_exclusive_group()
    only.add_argument("--host-only", action="store_true",
                      help="only the host scenarios (a VMM on the host kernel, ~1 s)")
    only.add_argument("--guest-only", action="store_true",
                      help="only the guest scenarios (host + VMM + guest, every design x "
                      "vSMMU accel/none x GICv4 off/on)")
    inf = sub.add_parser("info", help="inspect a booted machine: one interrupt's path, the "
                         "address spaces, the IOTLB, the ITS tables, PCI MSI/MSI-X "
                         "(like QEMU's monitor `info`)")
    _info_arguments(inf)
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info_main(args, parser)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args)
    if args.command == "compare":
        from .compare import main as compare_main

        try:
            return compare_main(sys.stdout, as_json=args.json, host=not args.guest_only,
                                guest=not args.host_only)
        except BrokenPipeError:           # `pymsi compare | head`: as the CPython docs say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


def _info_arguments(p: argparse.ArgumentParser) -> None:
    from .info import VIEWS

    p.add_argument("view", choices=sorted(VIEWS), help="what to show")
    p.add_argument("machine", nargs="?", default=None, metavar="MACHINE.toml",
                   help="a machine description (pymsi.machine.load: host + VMM + guest); "
                   "default: a built-in host machine (Arm virt, SMMUv3, one device with 8 "
                   "MSI-X vectors and a test driver)")
    p.add_argument("--host", action="store_true",
                   help="boot only the host of MACHINE.toml (its devices on the host, each "
                   "with a test driver), no VMM or guest")
    p.add_argument("--irq", type=int, default=None, metavar="N",
                   help="irq: this Linux IRQ (the guest's on a whole machine)")
    p.add_argument("--device", type=int, default=0, metavar="I",
                   help="irq: the I-th described device (default 0)")
    p.add_argument("--vector", type=int, default=0, metavar="V",
                   help="irq: its vector V (default 0)")
    p.add_argument("--fire", action="store_true",
                   help="fire every vector of every device once and let the machine settle "
                   "before inspecting (fills caches and counts)")


def _load_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:                                          # Python 3.10: the backport
        import tomli as tomllib
    with open(path, "rb") as f:
        table: dict[str, Any] = tomllib.load(f)
    return table


def _boot_host(m: ArmVirt | X86Pc) -> Kernel:
    """``m`` booted, a test driver bound to its devices (their vectors allocated)."""
    from .kernel.pci_endpoint_test import PciEndpointTestDriver

    k = m.boot()
    PciEndpointTestDriver(k).register()
    return k


def _host_only(desc: dict[str, Any]) -> tuple[ArmVirt, Kernel]:
    """A host machine from a description's host keys, booted, a test driver bound."""
    from .machine import ArmVirt

    devices = [{k: v for k, v in d.items() if k != "emulated"}
               for d in (desc.get("devices") or [{"msix": 8}])]
    m = ArmVirt(ncpus=desc.get("ncpus", 4), ram_size=desc.get("host_ram", 0x2000_0000),
                gicv4=desc.get("gicv4", False), devices=devices,
                backend=desc.get("backend"), msi_design=desc.get("variant", "per-vector"))
    return m, _boot_host(m)


def _info_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .info import VIEWS

    target: Kernel | VirtualMachine
    try:
        if args.machine is None:
            m, target = _host_only({})
            functions = m.functions
        else:
            from .machine import VirtualMachine, load

            vm = load(args.machine)                # checks the description (errors name it)
            if not isinstance(vm, VirtualMachine):      # arm-virt / x86-pc: a host alone
                target = _boot_host(vm)
                functions = vm.functions
            elif args.host:
                m, target = _host_only(_load_toml(args.machine))
                functions = m.functions
            else:
                target = vm.boot()
                functions = [vm.function(i) for i in range(len(vm.slots))]
    except (OSError, ValueError) as e:
        parser.exit(2, f"pymsi info: {e}\n")
    if args.fire:
        for fn in functions:
            n = fn.msix.vectors if fn.msix is not None else (     # set with msix_cap
                fn.msi.vectors if fn.msi is not None else 0)
            for v in range(n):
                fn.notify(v)
        if hasattr(target, "run"):
            target.run()
        else:
            target.bus.drain()
            target.handle_interrupts()
    try:
        if args.view == "irq":
            if args.irq is not None:
                which = args.irq
            else:
                if not 0 <= args.device < len(functions):
                    parser.exit(2, f"pymsi info: no device {args.device} "
                                f"({len(functions)} described)\n")
                dev = args.device if hasattr(target, "slots") else functions[args.device]
                which = (dev, args.vector)
            view = VIEWS["irq"](target, which)
        else:
            view = VIEWS[args.view](target)
    except ValueError as e:
        parser.exit(2, f"pymsi info: {e}\n")
    try:
        sys.stdout.write(view.text())
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
