"""The ``pymsi`` command."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pymsi`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="pymsi",
        description="An executable model of MSI delivery for PCI devices assigned to VMs "
        "(Arm SMMUv3 + GICv3 ITS) with userspace-chosen per-vector MSI addresses.",
    )
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
