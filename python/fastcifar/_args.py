"""The one check of an integer argument (a count, an index, a number of steps), used wherever
Python checks one before the core sees it; and the one argument binder (``signature`` / ``bind``,
on ``inspect.Signature.bind``), used by the capture's op rules and the schedules' constructors."""

from __future__ import annotations

import inspect
import numbers


def whole(name: str, v, lo: int | None, *, owner: str | None = None, unit: str = "") -> int:
    """``v`` as an int of at least ``lo``. A bool, a float or a string is refused: torch's own
    arguments take ints, and the core could not tell True from 1. ``lo=None`` where the core checks
    the range itself (the loader's counts: ``batch_size: -4 must not be negative``), so that each
    rule is checked in one place. The message names the argument as the caller wrote it:
    ``owner(name=v)``."""
    where = f"{owner}({name}={v!r})" if owner else f"{name}={v!r}"
    need = "an int" if lo is None else f"an int >= {lo}"
    hint = f" ({unit})" if unit else ""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (lo is not None and int(v) < lo):
        raise ValueError(f"{where}: expected {need}{hint}")
    n = int(v)  # typeshed's Integral declares no comparisons: compare its int value
    if not -(2**63) <= n < 2**63:
        raise ValueError(f"{where}: does not fit in 64 bits")
    return n


# --- the one argument binder ----------------------------------------------------------------------
_ORDER = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def signature(spec) -> inspect.Signature:
    """A signature from a list of ``name`` (required), ``(name, default)`` and ``"*name"`` (the
    remaining positional arguments, a tuple); a default of ``inspect.Parameter.empty`` is required."""
    params = []
    for s in spec:
        name, default = (s, inspect.Parameter.empty) if isinstance(s, str) else s
        if name.startswith("*"):
            params.append(inspect.Parameter(name[1:], inspect.Parameter.VAR_POSITIONAL))
        else:
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params)


class BindError(TypeError):
    """Why arguments do not bind to a signature, for the caller to say in its own words:
    ``kind`` is "positional" (``given`` positional arguments where ``limit`` are taken),
    "unexpected" (keyword ``name`` is not a parameter), "twice" (``name`` given by position and
    keyword) or "missing" (required ``name`` not given)."""

    def __init__(self, kind: str, name: str = "", given: int = 0, limit: int = 0):
        super().__init__(kind, name)
        self.kind, self.name, self.given, self.limit = kind, name, given, limit


def bind(sig: inspect.Signature, args, kwargs) -> dict:
    """``args`` and ``kwargs`` bound to ``sig`` (``Signature.bind``), defaults filled in, by
    parameter name in the signature's order; a BindError says what did not bind."""
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        raise _why_not(sig, args, kwargs) from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _why_not(sig: inspect.Signature, args, kwargs) -> BindError:
    """What ``Signature.bind`` refused, in the order a call is read: the positional arguments, then
    each keyword, then what is missing."""
    params = sig.parameters
    positional = [p.name for p in params.values() if p.kind in _ORDER]
    rest = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    if len(args) > len(positional) and not rest:
        return BindError("positional", given=len(args), limit=len(positional))
    taken = set(positional[: len(args)])
    for k in kwargs:
        p = params.get(k)
        if p is None or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            return BindError("unexpected", k)
        if k in taken:
            return BindError("twice", k)
    for p in params.values():
        if p.default is inspect.Parameter.empty and p.kind in _ORDER and p.name not in taken and p.name not in kwargs:
            return BindError("missing", p.name)
    return BindError("unexpected", "")  # not reached: every refusal of bind's is one of those
