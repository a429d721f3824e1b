"""Device models written against the plugin API (:mod:`pymsi.hw.qdev`): QEMU's edu
teaching device and a multi-queue NIC-like device.  Both are hardware: usable as a host's
physical function and as a VMM-emulated function on a guest's bus."""
