"""The bus's address decode: RAM first, then the one MMIO window that holds the whole
access, else a BusError for the CPU.  ``Bus.read`` / ``Bus.write`` guess the last window
found before looking one up (``_lo`` / ``_hi``); this checks, over random maps, unmaps,
RAM added later and accesses at every window's edges, that the guess never changes the
answer against a decoder that scans every window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi import core
from pymsi.errors import AlreadyExists, BusError
from pymsi.hw.bus import Bus

RAM, RAM_SIZE = 0x4000_0000, 0x1_0000
SLOTS = [0x1000_0000 + 0x1000 * i for i in range(3)]          # where windows may start


class Regs:
    """A model that records each access (offset, size, value written or None)."""

    def __init__(self, name: str) -> None:
        self.name, self.log = name, []

    def mmio_read(self, offset: int, size: int) -> int:
        self.log.append((offset, size, None))
        return offset ^ 0x5A

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        self.log.append((offset, size, value))


def expected(windows: dict[int, tuple[int, Regs]], ram, addr: int, size: int):
    """What the access must reach: "ram", (model, offset) or None (nothing)."""
    if ram.is_ram(addr, size):
        return "ram"
    for base, (wsize, model) in windows.items():
        if base <= addr and addr + size <= base + wsize:
            return model, addr - base
    return None


actions = st.lists(st.one_of(
    st.tuples(st.just("map"), st.sampled_from(SLOTS), st.sampled_from([0x10, 0x800, 0x1000])),
    st.tuples(st.just("unmap"), st.sampled_from(SLOTS), st.just(0)),
    st.tuples(st.just("ram"), st.sampled_from(SLOTS), st.just(0)),
    st.tuples(st.sampled_from(["read", "write"]), st.sampled_from(SLOTS),
              st.tuples(st.sampled_from([0, 4, 0xC, 0xE, 0xF, 0x7FC, 0x7FE, 0xFFC, 0xFFE,
                                         0x1000]), st.sampled_from([1, 2, 4, 8]))),
    st.tuples(st.sampled_from(["read", "write"]), st.sampled_from(SLOTS),
              st.tuples(st.sampled_from([0, 8]), st.just(4))),     # well inside
), min_size=4, max_size=40)


@settings(max_examples=400)            # cheap (~3 ms each): more sequences, more edges
@given(acts=actions, backend=st.sampled_from(["c", "python"]))
def test_decode_with_the_last_window_guess_is_the_full_decode(acts, backend):
    ram = core.backend(backend).Memory()
    ram.add_ram(RAM, RAM_SIZE)
    bus = Bus(ram)
    windows: dict[int, tuple[int, Regs]] = {}
    for n, (kind, base, arg) in enumerate(acts):
        if kind == "map":
            model = Regs(f"w{n}")
            try:
                bus.map(base, arg, model)
            except AlreadyExists:               # over another window, or RAM at an end
                assert (any(b < base + arg and base < b + s for b, (s, _) in windows.items())
                        or ram.is_ram(base, 1) or ram.is_ram(base + arg - 1, 1))
            else:
                windows[base] = (arg, model)
        elif kind == "unmap":
            if base in windows:
                bus.unmap(base)
                del windows[base]
        elif kind == "ram":
            if not ram.is_ram(base, 1):         # RAM added later, maybe inside a window's
                ram.add_ram(base, 0x1000)       # span: RAM wins there
        else:
            off, size = arg
            addr = base + off
            want = expected(windows, ram, addr, size)
            logs = {id(m): len(m.log) for _, m in windows.values()}
            try:
                if kind == "read":
                    got = bus.read(addr, size)
                else:
                    bus.write(addr, n, size)
            except BusError:
                assert want is None, (kind, hex(addr), want)
                continue
            assert want is not None, (kind, hex(addr))
            if want == "ram":
                if kind == "write":
                    assert ram.read(addr, size) == (n & (1 << 8 * size) - 1).to_bytes(
                        size, "little")
            else:
                model, off = want
                assert model.log[logs[id(model)]:] == [
                    (off, size, None if kind == "read" else n)]
                if kind == "read":
                    assert got == off ^ 0x5A
            for _, m in windows.values():       # no other model saw the access
                if want == "ram" or m is not want[0]:
                    assert len(m.log) == logs[id(m)]


@given(backend=st.sampled_from(["c", "python"]), wsize=st.sampled_from([0x10, 0x800, 0x1000]),
       size=st.sampled_from([2, 4, 8]), over=st.integers(1, 7), write=st.booleans())
def test_an_access_past_the_guessed_windows_end_reaches_nothing(backend, wsize, size, over,
                                                                write):
    """With the window just used as the guess, an access that starts inside it and ends
    1..size-1 bytes past its end is a BusError (nothing holds it whole), and the model
    sees nothing of it; after an unmap the old guess decodes nothing."""
    ram = core.backend(backend).Memory()
    ram.add_ram(RAM, RAM_SIZE)
    bus = Bus(ram)
    m = Regs("w")
    bus.map(SLOTS[0], wsize, m)
    assert bus.read(SLOTS[0], 4) == 0x5A                 # the guess is now this window
    over = min(over, size - 1)
    addr = SLOTS[0] + wsize + over - size               # starts inside, ends over past it
    try:
        bus.write(addr, 1, size) if write else bus.read(addr, size)
    except BusError:
        pass
    else:
        raise AssertionError(f"an access of {size} at {addr:#x} went to the model")
    assert m.log == [(0, 4, None)]
    bus.unmap(SLOTS[0])
    for access in (lambda: bus.read(SLOTS[0], 4), lambda: bus.write(SLOTS[0], 1, 4)):
        try:
            access()
        except BusError:
            continue
        raise AssertionError("an unmapped window still decodes")
    assert m.log == [(0, 4, None)]
