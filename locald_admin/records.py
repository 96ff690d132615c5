"""Frozen value classes, as ``@dataclass(frozen=True)`` makes them, without
the dataclasses module.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``,
``tokenize``, ``enum``, ...): about 7 ms of ``locald-shim``'s start, which
uses nothing else of it.  ``frozen`` makes what the project's value classes
use of a frozen dataclass, the same way (one generated ``__init__``, so a
message costs what it cost before): the fields are the class's annotations,
in order, with the class attribute of the same name as the default (or a
``field(default=..., compare=False, repr=False)``); ``__init__`` takes them
positionally or by name; ``__eq__`` and ``__hash__`` compare the tuple of
the compared fields of two instances of the same class; ``__repr__`` is
``Name(field=value, ...)``; assigning or deleting a field raises
``FrozenError`` (an AttributeError); ``__match_args__`` names the fields.
Only ``__init__`` is generated (compiling the others cost 0.1 ms a class
at import); the rest read the fields with ``operator.attrgetter``.
Annotations are only read for their names, never evaluated.
"""

from operator import attrgetter

TYPE_CHECKING = False  # typing's constant, without importing typing (mypy takes the name as true)
if TYPE_CHECKING:
    from typing import dataclass_transform
else:
    def dataclass_transform(**_):
        return lambda f: f


class FrozenError(AttributeError):
    """A field of a frozen value was assigned or deleted."""


class _Field:
    __slots__ = ("default", "compare", "repr")

    def __init__(self, default, compare, repr):
        self.default, self.compare, self.repr = default, compare, repr


def field(*, default=None, compare=True, repr=True):
    """A field's default, and whether it is compared (``__eq__``,
    ``__hash__``) and shown (``__repr__``)."""
    return _Field(default, compare, repr)


_MISSING = object()


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls):
    """Make ``cls`` a frozen value class (see the module's text)."""
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults, compared, shown = {}, [], []
    for name in names:
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, _Field):
            spec = value
            setattr(cls, name, spec.default)
        else:
            spec = _Field(value, True, True)
        if spec.default is not _MISSING:
            defaults[name] = spec.default
        elif defaults:
            raise TypeError(f"{cls.__name__}: field {name} without a default follows one with a default")
        if spec.compare:
            compared.append(name)
        if spec.repr:
            shown.append(name)
    params = ", ".join(f"{n}=_defaults[{n!r}]" if n in defaults else n for n in names)
    sets = "".join(f"\n    _set(self, {n!r}, {n})" for n in names) or "\n    pass"
    space = {"_set": object.__setattr__, "_defaults": defaults}
    # The one generated function, as dataclasses makes it: a message's
    # __init__ is on the mechanism's path for every call.
    exec(f"def __init__(self, {params}):{sets}\n", space)  # noqa: S102 (made of the class's own field names)
    if len(compared) == 1:
        one = attrgetter(compared[0])

        def key(self):
            return (one(self),)
    else:
        key = attrgetter(*compared) if compared else (lambda self: ())
    fields = frozenset(names)
    shown = tuple(shown)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    def __hash__(self):
        return hash(key(self))

    def __repr__(self):
        return f"{self.__class__.__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in shown)})"

    def __setattr__(self, name, value):
        if type(self) is cls or name in fields:
            raise FrozenError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self, name):
        if type(self) is cls or name in fields:
            raise FrozenError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    for function in (space["__init__"], __eq__, __hash__, __repr__, __setattr__, __delattr__):
        function.__qualname__ = f"{cls.__qualname__}.{function.__name__}"
        setattr(cls, function.__name__, function)
    cls.__match_args__ = names
    return cls
