"""Typed dataclasses to and from plain JSON values: how driver state lands in a run directory.

A run directory is data that users pass around (a colleague's checkpoint, a cluster's shared storage), so it
is read with a data format only: nothing in it may name a class to build or a function to call. Decoding is
driven by the *reader's* type hints (`from_jsonable(Episode, d)`), never by names stored in the file.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import types
import typing
from functools import lru_cache
from typing import Any, Union

import numpy as np


class DecodeError(ValueError):
    """A value that does not have the shape its type asks for (a damaged or foreign file)."""


def to_jsonable(obj: Any) -> Any:
    """Dataclasses become dicts, enums their values, tuples lists; numbers, strings, None stay."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{type(obj).__name__} is not plain data: it cannot go into a run directory")


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(tp: Any, value: Any, where: str = "$") -> Any:
    """The inverse of `to_jsonable` for a value of type `tp`; `DecodeError` names the first bad place."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return from_jsonable(arg, value, where)
            except DecodeError as e:
                errors.append(str(e))
        raise DecodeError(errors[0] if errors else f"{where}: unexpected {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints, names = _hints(tp), {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise DecodeError(f"{where}: unknown fields {sorted(unknown)} for {tp.__name__}")
        try:
            return tp(**{k: from_jsonable(hints[k], v, f"{where}.{k}") for k, v in value.items()})
        except TypeError as e:  # a required field missing
            raise DecodeError(f"{where}: {e}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise DecodeError(f"{where}: {value!r} is not a {tp.__name__}") from None
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise DecodeError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(from_jsonable(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [from_jsonable(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected an object, got {type(value).__name__}")
        args = typing.get_args(tp)
        item = args[1] if args else Any
        return {k: from_jsonable(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise DecodeError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is object:
        return value
    raise DecodeError(f"{where}: cannot decode type {tp!r}")


# ---- RNG states: the generators' own tuples, as lists of numbers ------------------------------------------

def python_rng_state(rng: random.Random | None = None) -> list:
    version, internal, gauss = (rng or random).getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list, rng: random.Random | None = None) -> None:
    try:
        version, internal, gauss = state
        (rng or random).setstate((int(version), tuple(int(x) for x in internal), gauss))
    except (TypeError, ValueError) as e:
        raise DecodeError(f"python RNG state: {e}") from None


def numpy_rng_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def set_numpy_rng_state(state: list) -> None:
    try:
        name, keys, pos, has_gauss, cached = state
        np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    except (TypeError, ValueError) as e:
        raise DecodeError(f"numpy RNG state: {e}") from None
