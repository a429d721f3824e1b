"""Declarative C structures with the exact layout Linux has on arm64 and x86-64.

One class per UAPI structure declares its members in order with their C types::

    class IommuIoasMap(Struct):
        _c_name_ = "iommu_ioas_map"
        _fields_ = (("size", u32), ("flags", u32), ("ioas_id", u32), ("__reserved", u32),
                    ("user_va", aligned_u64), ("length", aligned_u64), ("iova", aligned_u64))

and the class computes the C layout: every member at the next multiple of its
natural alignment, ``__aligned_u64`` aligned to 8, the structure aligned to its
most aligned member and ``sizeof`` rounded up to that alignment; a union puts
every member at offset 0.  Member types are the scalar :class:`CType` objects
below, :class:`Array` (a fixed array of scalars), another :class:`Struct` or
:class:`Union` class (a nested member, read and written in place), ``(None, U)``
for an anonymous union whose members belong to the outer structure, and
:class:`Flex` for a trailing flexible array member.

An instance owns the bytes of the fixed part (little-endian, as on both
architectures) and a Python list for the flexible array member.  Members are
attributes with the C names; assigning a value that does not fit the C type
raises ValueError (a non-integer TypeError) and changes nothing, so a kernel
model can read fields directly and trust their range.  ``pack()`` gives the
bytes userspace would hand to ioctl(2): the fixed part, then the flexible array
elements.  ``unpack(buf)`` reads them back.

Where the header says the first member is the size of the argument (``size`` in
iommufd, ``argsz`` in VFIO), that member follows the packed length until someone
assigns it: a fresh ``VfioIrqSet(count=2, data=[fd0, fd1])`` reads ``argsz == 28``.
Assigning it (or passing it to the constructor, or unpacking) fixes the value, so
a test can hand the kernel a wrong size on purpose.  :meth:`Struct.set_size`
goes back to following the packed length.
"""

from __future__ import annotations

import struct as _pystruct
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast, overload

from ..errors import InvalidArgument

__all__ = [
    "CType", "Array", "Flex", "Struct", "Union", "ArrayView", "anonymous_union",
    "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "aligned_u64", "aligned_le64",
]


class CType:
    """A C integer type: its size, alignment and signedness (LP64, little-endian)."""

    __slots__ = ("name", "size", "align", "signed", "codec", "lo", "hi")

    def __init__(self, name: str, size: int, signed: bool = False, align: int | None = None):
        self.name = name
        self.size = size
        self.align = size if align is None else align
        self.signed = signed
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
        self.codec = _pystruct.Struct("<" + (code.lower() if signed else code))
        bits = 8 * size
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1

    def check(self, value: object, where: str) -> int:
        """``value`` if it is an int that fits this type, else TypeError / ValueError."""
        if not isinstance(value, int):
            raise TypeError(f"{where}: {self.name} needs an int, not {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(f"{where}: {value:#x} does not fit in {self.name}")
        return value

    def __repr__(self) -> str:
        return self.name


u8 = CType("__u8", 1)
u16 = CType("__u16", 2)
u32 = CType("__u32", 4)
u64 = CType("__u64", 8)
s8 = CType("__s8", 1, True)
s16 = CType("__s16", 2, True)
s32 = CType("__s32", 4, True)
s64 = CType("__s64", 8, True)
aligned_u64 = CType("__aligned_u64", 8, align=8)
aligned_le64 = CType("__aligned_le64", 8, align=8)


class Array:
    """A fixed-length array member ``T name[n]`` of a scalar type."""

    __slots__ = ("ctype", "n")

    def __init__(self, ctype: CType, n: int) -> None:
        if not isinstance(ctype, CType) or n < 1:
            raise TypeError("Array needs a scalar CType and a positive length")
        self.ctype = ctype
        self.n = n

    @property
    def size(self) -> int:
        return self.ctype.size * self.n

    @property
    def align(self) -> int:
        return self.ctype.align


class Flex:
    """A trailing flexible array member ``T name[]`` of a scalar type or a structure."""

    __slots__ = ("elem",)

    def __init__(self, elem: CType | type[Struct]) -> None:
        self.elem = elem

    @property
    def align(self) -> int:
        return _size_align(self.elem)[1]


def _up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _size_align(t: Any) -> tuple[int, int]:
    if isinstance(t, (CType, Array)):
        return t.size, t.align
    if isinstance(t, type) and issubclass(t, Struct) and t is not Struct and t is not Union:
        return t.sizeof, t.alignof
    raise TypeError(f"not a C member type: {t!r}")


class ArrayView(Sequence[int]):
    """A fixed array member read and written in place (``arg.ste[1] = x``)."""

    __slots__ = ("_buf", "_off", "_ct", "_n", "_where")

    def __init__(self, buf: bytearray, off: int, ct: CType, n: int, where: str) -> None:
        self._buf, self._off, self._ct, self._n, self._where = buf, off, ct, n, where

    def __len__(self) -> int:
        return self._n

    def _index(self, i: int) -> int:
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"{self._where}[{i}] out of range")
        return self._off + i * self._ct.size

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        value: int = self._ct.codec.unpack_from(self._buf, self._index(i))[0]
        return value

    def __setitem__(self, i: int, value: int) -> None:
        at = self._index(i)
        self._ct.codec.pack_into(self._buf, at, self._ct.check(value, f"{self._where}[{i}]"))

    def __iter__(self) -> Iterator[int]:
        ct, step = self._ct, self._ct.size
        for k in range(self._n):
            yield ct.codec.unpack_from(self._buf, self._off + k * step)[0]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ArrayView, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


class _Scalar:
    __slots__ = ("name", "offset", "ct")

    def __init__(self, name: str, offset: int, ct: CType) -> None:
        self.name, self.offset, self.ct = name, offset, ct

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        return self.ct.codec.unpack_from(obj._buf, obj._off + self.offset)[0]

    def __set__(self, obj: Any, value: Any) -> None:
        v = self.ct.check(value, f"{type(obj).__name__}.{self.name}")
        self.ct.codec.pack_into(obj._buf, obj._off + self.offset, v)


class _SizeScalar(_Scalar):
    """The ``size`` / ``argsz`` member: follows the packed length until assigned."""

    __slots__ = ()

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        if obj._auto:
            return obj.total_size()
        return super().__get__(obj, cls)

    def __set__(self, obj: Any, value: Any) -> None:
        super().__set__(obj, value)
        object.__setattr__(obj, "_auto", False)


class _ArrayMember:
    __slots__ = ("name", "offset", "arr")

    def __init__(self, name: str, offset: int, arr: Array) -> None:
        self.name, self.offset, self.arr = name, offset, arr

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        return ArrayView(obj._buf, obj._off + self.offset, self.arr.ctype, self.arr.n,
                         f"{type(obj).__name__}.{self.name}")

    def __set__(self, obj: Any, value: Any) -> None:
        ct, n, where = self.arr.ctype, self.arr.n, f"{type(obj).__name__}.{self.name}"
        if isinstance(value, (bytes, bytearray)) and ct.size == 1:
            value = list(value)
        values = list(value)
        if len(values) != n:
            raise InvalidArgument(f"{where}: needs {n} elements, got {len(values)}")
        checked = [ct.check(v, f"{where}[{i}]") for i, v in enumerate(values)]
        base = obj._off + self.offset
        for i, v in enumerate(checked):
            ct.codec.pack_into(obj._buf, base + i * ct.size, v)


class _NestedMember:
    __slots__ = ("name", "offset", "cls")

    def __init__(self, name: str, offset: int, cls: type[Struct]) -> None:
        self.name, self.offset, self.cls = name, offset, cls

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        return self.cls._view(obj._buf, obj._off + self.offset)

    def __set__(self, obj: Any, value: Any) -> None:
        view = self.cls._view(obj._buf, obj._off + self.offset)
        if isinstance(value, self.cls):
            data = value._fixed_bytes()
            obj._buf[obj._off + self.offset:obj._off + self.offset + len(data)] = data
        elif isinstance(value, dict):
            staged = self.cls._view(bytearray(view._fixed_bytes()), 0)
            for k, v in value.items():
                staged._set_known(k, v)
            data = staged._fixed_bytes()
            obj._buf[obj._off + self.offset:obj._off + self.offset + len(data)] = data
        else:
            raise TypeError(f"{type(obj).__name__}.{self.name} takes a {self.cls.__name__} "
                            f"or a dict of its members")


class _FlexMember:
    __slots__ = ("name", "offset", "flex")

    def __init__(self, name: str, offset: int, flex: Flex) -> None:
        self.name, self.offset, self.flex = name, offset, flex

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        return obj._flex

    def __set__(self, obj: Any, value: Any) -> None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            object.__setattr__(obj, "_flex", bytes(value))
            return
        items = list(value)
        obj._check_flex(items)
        object.__setattr__(obj, "_flex", items)


class _StructMeta(type):
    _union_: bool

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any],
                **kw: Any) -> Any:
        ns.setdefault("__slots__", ())
        cls = super().__new__(mcls, name, bases, ns, **kw)
        if "_fields_" in ns:
            _layout(cls)
        return cls

    def __repr__(cls) -> str:
        c = cls.__dict__.get("_c_name_")
        return f"<{'union' if cls._union_ else 'struct'} {c or cls.__name__}>"


def _layout(cls: Any) -> None:
    reserved = set(dir(Struct))
    members: list[tuple[str, int, Any]] = []
    order: list[str] = []
    offset = 0
    align = 1
    flex: tuple[str, int, Flex] | None = None
    union = cls._union_

    def register(name: str, off: int, t: Any) -> None:
        if name in reserved or any(m[0] == name for m in members):
            raise TypeError(f"{cls.__name__}: member name {name!r} clashes")
        if isinstance(t, CType):
            desc: Any = _Scalar(name, off, t)
        elif isinstance(t, Array):
            desc = _ArrayMember(name, off, t)
        else:
            desc = _NestedMember(name, off, t)
        members.append((name, off, t))
        setattr(cls, name, desc)

    for name, t in cls._fields_:
        if flex is not None:
            raise TypeError(f"{cls.__name__}: the flexible array member must be last")
        if isinstance(t, Flex):
            if union:
                raise TypeError(f"{cls.__name__}: a union cannot hold a flexible array")
            a = t.align
            flex = (name, _up(offset, a), t)
            align = max(align, a)
            continue
        size, a = _size_align(t)
        if isinstance(t, type) and t._flex_ is not None:  # type: ignore[attr-defined]
            # (_size_align above accepted t only as a Struct subclass)
            raise TypeError(f"{cls.__name__}.{name}: nested structure has a flexible array")
        off = 0 if union else _up(offset, a)
        offset = max(offset, off + size)
        align = max(align, a)
        if name is None:
            if not (isinstance(t, type) and issubclass(t, Struct)):
                raise TypeError(f"{cls.__name__}: an anonymous member must be a struct/union")
            for sub, sub_off, sub_t in t._members_:
                register(sub, off + sub_off, sub_t)
                order.append(sub)
        else:
            register(name, off, t)
            order.append(name)

    end = offset if flex is None else max(offset, flex[1])
    cls.sizeof = _up(end, align) if end else 0
    cls.alignof = align
    cls._members_ = tuple(members)
    cls._order_ = tuple(order)
    cls._names_ = frozenset(m[0] for m in members) | ({flex[0]} if flex else frozenset())
    cls._flex_ = flex
    if flex is not None:
        setattr(cls, flex[0], _FlexMember(*flex))
    size_field = cls.__dict__.get("_size_field_", "auto")
    if size_field == "auto":
        first = members[0] if members else None
        size_field = None
        if (not union and first is not None and first[1] == 0 and first[2] is u32
                and first[0] in ("size", "argsz")):
            size_field = first[0]
    cls._size_field_ = size_field
    if size_field is not None:
        _, off, t = next(m for m in members if m[0] == size_field)
        setattr(cls, size_field, _SizeScalar(size_field, off, t))


_S = TypeVar("_S", bound="Struct")


class Struct(metaclass=_StructMeta):
    """A C structure; subclasses declare ``_fields_`` and get the C layout."""

    __slots__ = ("_buf", "_off", "_flex", "_auto")
    _buf: bytearray
    _off: int
    _flex: list[Any] | bytes | None
    _auto: bool

    _union_: ClassVar[bool] = False
    _c_name_: ClassVar[str] = ""
    sizeof: ClassVar[int] = 0
    alignof: ClassVar[int] = 1
    _members_: ClassVar[tuple[tuple[str, int, Any], ...]] = ()
    _order_: ClassVar[tuple[str, ...]] = ()
    _names_: ClassVar[frozenset[str]] = frozenset()
    _flex_: ClassVar[tuple[str, int, Flex] | None] = None
    _size_field_: ClassVar[str | None] = None

    def __init__(self, **values: object) -> None:
        cls = type(self)
        object.__setattr__(self, "_buf", bytearray(cls.sizeof))
        object.__setattr__(self, "_off", 0)
        object.__setattr__(self, "_flex", [] if cls._flex_ is not None else None)
        object.__setattr__(self, "_auto", cls._size_field_ is not None)
        for k, v in values.items():
            self._set_known(k, v)

    if TYPE_CHECKING:
        # The members are descriptors _layout() makes from ``_fields_`` when the class is
        # created, so a type checker cannot see them: a member reads as an int, an
        # ArrayView, a nested Struct or the flexible array's list, whichever its C type.
        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    def _set_known(self, name: str, value: object) -> None:
        if name not in type(self)._names_:
            raise TypeError(f"{type(self).__name__} has no member {name!r}")
        setattr(self, name, value)

    @classmethod
    def _view(cls: type[_S], buf: bytearray, off: int) -> _S:
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_buf", buf)
        object.__setattr__(obj, "_off", off)
        object.__setattr__(obj, "_flex", None)
        object.__setattr__(obj, "_auto", False)
        return obj

    # --- layout queries -------------------------------------------------------------
    @classmethod
    def offsetof(cls, path: str) -> int:
        """The byte offset of a member; ``"u.msi.devid"`` walks nested members."""
        head, _, rest = path.partition(".")
        if cls._flex_ is not None and head == cls._flex_[0] and not rest:
            return cls._flex_[1]
        for name, off, t in cls._members_:
            if name == head:
                if not rest:
                    return off
                if isinstance(t, type) and issubclass(t, Struct):
                    return off + t.offsetof(rest)
                break
        raise KeyError(f"{cls.__name__} has no member {path!r}")

    @classmethod
    def offsetofend(cls, path: str) -> int:
        """The offset just past a member (Linux's ``offsetofend``, for minimum sizes)."""
        head, _, rest = path.partition(".")
        if cls._flex_ is not None and head == cls._flex_[0] and not rest:
            return cls._flex_[1]
        for name, off, t in cls._members_:
            if name == head:
                if not rest:
                    return off + _size_align(t)[0]
                if isinstance(t, type) and issubclass(t, Struct):
                    return off + t.offsetofend(rest)
                break
        raise KeyError(f"{cls.__name__} has no member {path!r}")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Member names in declaration order (anonymous members' own names)."""
        return cls._order_ + ((cls._flex_[0],) if cls._flex_ is not None else ())

    # --- the flexible array member --------------------------------------------------
    def _flex_elem_(self) -> CType | type[Struct]:
        """The element type of the flexible array member (a subclass may look at flags)."""
        return type(self)._flex_[2].elem  # type: ignore[index]

    def _check_flex(self, items: list[Any]) -> None:
        elem = self._flex_elem_()
        name = type(self)._flex_[0]  # type: ignore[index]
        for i, v in enumerate(items):
            where = f"{type(self).__name__}.{name}[{i}]"
            if isinstance(elem, CType):
                elem.check(v, where)
            elif not isinstance(v, elem):
                raise TypeError(f"{where}: needs a {elem.__name__}")

    def flex_items(self) -> list[Any]:
        """The flexible array's elements as values, even when it was given as raw bytes.

        Raw bytes are read with the element type the structure implies now (for
        :class:`~pymsi.uapi.vfio.VfioIrqSet`, the one its DATA flag names); a
        trailing partial element is left out, as a kernel reading whole elements would.
        """
        flex = self._flex
        if flex is None:
            raise TypeError(f"{type(self).__name__} has no flexible array member")
        if not isinstance(flex, bytes):
            return list(flex)
        elem = self._flex_elem_()
        esize = _size_align(elem)[0]
        n = len(flex) // esize
        if isinstance(elem, CType):
            return [elem.codec.unpack_from(flex, i * esize)[0] for i in range(n)]
        return [elem.unpack(flex[i * esize:(i + 1) * esize]) for i in range(n)]

    def _flex_bytes(self) -> bytes:
        flex = self._flex
        if not flex:
            return b""
        if isinstance(flex, bytes):
            return flex
        self._check_flex(flex)
        elem = self._flex_elem_()
        if isinstance(elem, CType):
            return b"".join(elem.codec.pack(v) for v in flex)
        return b"".join(v.pack() for v in flex)

    def _flex_len(self) -> int:
        flex = self._flex
        if not flex:
            return 0
        if isinstance(flex, bytes):
            return len(flex)
        return len(flex) * _size_align(self._flex_elem_())[0]

    # --- bytes ----------------------------------------------------------------------
    def total_size(self) -> int:
        """The length of :meth:`pack`: the fixed part plus the flexible array."""
        cls = type(self)
        if cls._flex_ is None or self._flex is None:
            return cls.sizeof
        return max(cls.sizeof, cls._flex_[1] + self._flex_len())

    def set_size(self: _S) -> _S:
        """Make the size member follow the packed length again; returns self."""
        if type(self)._size_field_ is None:
            raise TypeError(f"{type(self).__name__} has no size member")
        object.__setattr__(self, "_auto", True)
        return self

    def _fixed_bytes(self) -> bytes:
        return bytes(self._buf[self._off:self._off + type(self).sizeof])

    def pack(self) -> bytes:
        """The bytes of the structure as userspace passes them to ioctl(2)."""
        cls = type(self)
        fixed = bytearray(self._fixed_bytes())
        if self._auto:
            sf = cast(str, cls._size_field_)          # _auto is only ever set with one
            desc = cls.__dict__.get(sf) or getattr(cls, sf)
            desc.ct.codec.pack_into(fixed, desc.offset, desc.ct.check(
                self.total_size(), f"{cls.__name__}.{sf}"))
        if cls._flex_ is None or self._flex is None:
            return bytes(fixed)
        out = bytes(fixed[:cls._flex_[1]]) + self._flex_bytes()
        if len(out) < cls.sizeof:
            out += bytes(fixed[len(out):])
        return out

    @classmethod
    def unpack(cls: type[_S], data: bytes | bytearray | memoryview,
               nflex: int | None = None) -> _S:
        """The structure held in ``data`` (the size member keeps the value it has there).

        Without a flexible array member ``data`` must hold at least ``sizeof`` bytes
        and only those are read.  With one, the elements are those that fit in the
        rest of ``data``, or exactly ``nflex`` of them.
        """
        data = bytes(data)
        need = cls.sizeof if cls._flex_ is None else cls._flex_[1]
        if len(data) < need:
            raise InvalidArgument(f"{cls.__name__}.unpack: {len(data)} bytes, needs {need}")
        obj = cls.__new__(cls)
        fixed = bytearray(data[:cls.sizeof])
        fixed.extend(bytes(cls.sizeof - len(fixed)))
        object.__setattr__(obj, "_buf", fixed)
        object.__setattr__(obj, "_off", 0)
        object.__setattr__(obj, "_auto", False)
        object.__setattr__(obj, "_flex", None)
        if cls._flex_ is not None:
            raw = data[cls._flex_[1]:]
            elem = obj._flex_elem_()
            esize = _size_align(elem)[0]
            n = len(raw) // esize if nflex is None else nflex
            if n < 0 or n * esize > len(raw):
                raise InvalidArgument(f"{cls.__name__}.unpack: {n} elements do not fit")
            if isinstance(elem, CType):
                items = [elem.codec.unpack_from(raw, i * esize)[0] for i in range(n)]
            else:
                items = [elem.unpack(raw[i * esize:(i + 1) * esize]) for i in range(n)]
            object.__setattr__(obj, "_flex", items)
        return obj

    def copy(self: _S) -> _S:
        """A detached copy (a nested member's copy owns its own bytes)."""
        other = type(self).unpack(self.pack())
        object.__setattr__(other, "_auto", self._auto)
        if isinstance(self._flex, list):
            object.__setattr__(other, "_flex", [v.copy() if isinstance(v, Struct) else v
                                                for v in self._flex])
        return other

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.pack() == other.pack()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [f"{n}={getattr(self, n)!r}" for n in self._order_]
        flex = type(self)._flex_
        if flex is not None and self._flex is not None:
            parts.append(f"{flex[0]}={self._flex!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class Union(Struct):
    """A C union: every member at offset 0, sizeof the largest rounded to alignment."""

    __slots__ = ()
    _union_: ClassVar[bool] = True


def anonymous_union(*fields: tuple[str, Any]) -> type[Union]:
    """A union type for ``(None, anonymous_union(...))``: its members join the outer struct."""
    u: type[Union] = _StructMeta("_AnonUnion", (Union,), {"_fields_": tuple(fields)})
    return u


def iter_members(cls: type[Struct]) -> Iterable[tuple[str, int, Any]]:
    """(name, offset, type) of every member of ``cls``, nested members flattened."""
    for name, off, t in cls._members_:
        if isinstance(t, type) and issubclass(t, Struct):
            for sub, sub_off, sub_t in iter_members(t):
                yield f"{name}.{sub}", off + sub_off, sub_t
        else:
            yield name, off, t
