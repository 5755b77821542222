"""The validator's fast path: is a resource valid? Answered per object *shape*.

Everything the thorough walk checks about an object's keys (unknown elements, ``_name``
extensions, one ``value[x]`` at most, required elements, ele-1, ext-1) depends only on the
tuple of its keys, and a real data set has few of them: all 25,814 Synthea resources hold
76 distinct key tuples. So the first time a valid key tuple is seen for a type, a
straight-line function is generated and compiled for it: it unpacks ``obj.values()`` into
locals and checks each value inline (a type test, a cached-by-value primitive format check,
a call into the next object's checker). A valid object then costs one ``tuple(obj)``, one
dict lookup and one call, with no location strings and no issue building.

The answer is only ever a yes/no. A "no" (or a shape this module will not compile) sends the
resource through the thorough walk in ``validator.py``, which builds the issues, so issues
come from one place only; a "yes" must imply that the thorough walk finds nothing, which the
tests check on thousands of damaged resources.

Memory is bounded: at most ``SHAPES_PER_TYPE`` compiled shapes per type and ``SHAPES`` in all
(beyond that, new shapes take the thorough walk) and ``VALUES_PER_PRIMITIVE`` remembered good values
of at most ``REMEMBERED_LENGTH`` characters per primitive type (the set is emptied when full: the
values that repeat come back at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mapping.validation.primitives import INT32_MAX, INT32_MIN, Checker
from mapping.validation.structures import KIND_COMPLEX, KIND_PRIMITIVE, KIND_RESOURCE

SHAPES_PER_TYPE = 256
SHAPES = 4096
VALUES_PER_PRIMITIVE = 4096
REMEMBERED_LENGTH = 256  # characters; longer good values are not remembered

# (kind, target, minimum, maximum, choice): the validator's compiled element spec
Spec = tuple[int, Any, int, int, str | None]
Invariant = Callable[[Any, str, list[dict[str, Any]]], None]
ObjectCheck = Callable[[object], bool]

# Inline expressions for primitives whose check is a type test; ``{v}`` is the value.
_INLINE = {
    "boolean": "type({v}) is bool",
    "decimal": "(type({v}) is int or (type({v}) is float and isfinite({v})))",
    "integer": f"(type({{v}}) is int and {INT32_MIN} <= {{v}} <= {INT32_MAX})",
    "unsignedInt": f"(type({{v}}) is int and 0 <= {{v}} <= {INT32_MAX})",
    "positiveInt": f"(type({{v}}) is int and 1 <= {{v}} <= {INT32_MAX})",
    "string": '(type({v}) is str and {v} != "")',
    "markdown": '(type({v}) is str and {v} != "")',
}
# Resource ids are unique by definition: remembering them would only evict values that repeat.
# Attachment data and narratives can be megabytes: hashing them to look them up costs, and
# remembering them would hold them in memory.
_NOT_REMEMBERED = frozenset({"id", "base64Binary", "xhtml"})


class ShapeChecks:
    """Compiled yes/no validity checks for the types of the validator's tables."""

    def __init__(self, tables: Mapping[str, Mapping[str, Spec]],
                 required: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]],
                 invariants: Mapping[str, Invariant], primitive_names: Mapping[Checker, str],
                 resource_types: Iterable[str]) -> None:
        self._tables = tables
        self._required = required
        self._invariants = invariants
        self._ids = {type_name: index for index, type_name in enumerate(tables)}
        self._resource_types = frozenset(resource_types)
        self._shapes: dict[str, dict[tuple[str, ...], ObjectCheck]] = {name: {} for name in tables}
        self._compiled = 0
        self._primitive_ids: dict[Checker, int] = {}
        self._remembered: list[set[str]] = []
        self._inline: list[str] = []  # per primitive: expression template, ``{v}`` is the value
        self._namespace: dict[str, Any] = {"isfinite": math.isfinite}
        for type_name, index in self._ids.items():
            self._add_type(type_name, index)
        for checker, name in primitive_names.items():
            self._add_primitive(checker, name)
        self._add_resource_checks()
        self._new_shape = {name: self._namespace[f"N{index}"] for name, index in self._ids.items()}

    def resource_is_valid(self, resource: dict[str, Any]) -> bool:
        """True only if the thorough walk would report nothing for this resource's structure.

        ``resource`` must already be known to be a dict with a known ``resourceType``; the
        dom-3 check of root ``contained`` references is the caller's.
        """
        resource_type = resource["resourceType"]
        try:
            return (self._shapes[resource_type].get(tuple(resource)) or self._new_shape[resource_type])(resource)
        except RecursionError:  # absurdly deep nesting: the iterative walk will say what is wrong
            return False

    def forget_values(self) -> None:
        """Drop the remembered good primitive values (compiled shapes stay), as in a fresh process."""
        for good in self._remembered:
            good.clear()

    def _add_primitive(self, checker: Checker, name: str) -> None:
        index = len(self._primitive_ids)
        self._primitive_ids[checker] = index
        namespace = self._namespace
        inline = _INLINE.get(name)
        if inline is None and name in _NOT_REMEMBERED:
            namespace[f"X{index}"] = checker
            inline = f"X{index}({{v}}) is None"
        elif inline is None:
            good: set[str] = set()
            self._remembered.append(good)
            namespace[f"K{index}"] = good
            namespace[f"M{index}"] = _remembering(checker, good)
            inline = f"(type({{v}}) is str and {{v}} in K{index} or M{index}({{v}}))"
        self._inline.append(inline)
        source = (f"def L(x):\n    if type(x) is not list or not x:\n        return False\n"
                  f"    for v in x:\n        if not {inline.format(v='v')}:\n"
                  f"            return False\n    return True\n")
        namespace[f"PL{index}"] = _compile(source, "L", namespace, f"<{name}[] check>")

    def _add_resource_checks(self) -> None:
        namespace = self._namespace
        known = self._resource_types
        by_type = {name: namespace[f"F{self._ids[name]}"] for name in known}

        def one(value: object) -> bool:
            if type(value) is not dict:
                return False
            resource_type = value.get("resourceType")
            return type(resource_type) is str and resource_type in known and by_type[resource_type](value)

        def many(value: object) -> bool:
            if type(value) is not list or not value:
                return False
            for item in value:
                if type(item) is not dict or "contained" in item:  # dom-2
                    return False
                resource_type = item.get("resourceType")
                if type(resource_type) is not str or resource_type not in known or not by_type[resource_type](item):
                    return False
            return True

        namespace["R1"] = one
        namespace["RL"] = many

    def _add_type(self, type_name: str, index: int) -> None:
        """H: compiled shapes by key tuple; N: a dict whose shape is not compiled yet; F: any value; L: arrays."""
        shapes = self._shapes[type_name]
        compile_shape = self._compile_shape

        def new_shape(obj: dict[str, Any]) -> bool:
            shape = compile_shape(type_name, tuple(obj))
            return shape is not None and shape(obj)

        def check(obj: object) -> bool:
            return type(obj) is dict and (shapes.get(tuple(obj)) or new_shape)(obj)

        def check_all(items: object) -> bool:
            if type(items) is not list or not items:
                return False
            for obj in items:
                if type(obj) is not dict or not (shapes.get(tuple(obj)) or new_shape)(obj):
                    return False
            return True

        namespace = self._namespace
        namespace[f"H{index}"] = shapes
        namespace[f"N{index}"] = new_shape
        namespace[f"F{index}"] = check
        namespace[f"L{index}"] = check_all

    def _compile_shape(self, type_name: str, keys: tuple[str, ...]) -> ObjectCheck | None:
        """A check for objects of ``type_name`` with exactly these keys, None if no such object is valid."""
        shapes = self._shapes[type_name]
        if (len(shapes) >= SHAPES_PER_TYPE or self._compiled >= SHAPES
                or not self._keys_are_valid(type_name, keys)):
            return None
        table = self._tables[type_name]
        names = [f"v{position}" for position in range(len(keys))]
        tests = [test for key, name in zip(keys, names, strict=True)
                 if (test := self._value_test(table[key], name)) is not None]
        unpack = "".join(f"{name}, " for name in names)
        source = f"def S(o):\n    {unpack}= o.values()\n    return {' and '.join(tests) or 'True'}\n"
        shape = _compile(source, "S", self._namespace, f"<{type_name} shape>")
        shapes[keys] = shape
        self._compiled += 1
        return shape

    def _keys_are_valid(self, type_name: str, keys: tuple[str, ...]) -> bool:
        """The walk's key-only checks, for one key tuple (``_name`` keys are left to the walk)."""
        table = self._tables[type_name]
        if not keys or any(key not in table for key in keys):  # ele-1, unknown and ``_name`` keys
            return False
        choices = [table[key][4] for key in keys if table[key][4] is not None]
        if len(choices) != len(set(choices)):
            return False
        present = set(keys)
        for _label, names in self._required.get(type_name, ()):
            if present.isdisjoint(names):
                return False
        invariant = self._invariants.get(type_name)
        if invariant is not None:
            problems: list[dict[str, Any]] = []
            invariant(keys, type_name, problems)
            if problems:
                return False
        return True

    def _value_test(self, spec: Spec, name: str) -> str | None:
        """The inline test of local ``name`` for one element; None when there is nothing to test."""
        kind, target, _minimum, maximum, _choice = spec
        if kind == KIND_PRIMITIVE:
            index = self._primitive_ids[target]
            return self._inline[index].format(v=name) if maximum == 1 else f"PL{index}({name})"
        if kind == KIND_COMPLEX:
            index = self._ids[target]
            if maximum == 1:
                return f"(type({name}) is dict and (H{index}.get(tuple({name})) or N{index})({name}))"
            one = f"(H{index}.get(tuple({name}[0])) or N{index})({name}[0])"  # the common single item, inline
            many = f"(L{index}({name}) and len({name}) <= {maximum})" if maximum > 0 else f"L{index}({name})"
            return f"(type({name}) is list and len({name}) == 1 and type({name}[0]) is dict and {one} or {many})"
        if kind == KIND_RESOURCE:
            return f"R1({name})" if maximum == 1 else f"RL({name})"
        return None  # resourceType of a resource: checked on entry


def _remembering(checker: Checker, good: set[str]) -> Callable[[object], bool]:
    """The checker as a yes/no that remembers the strings it accepted."""

    def check(value: object) -> bool:
        if checker(value) is not None:
            return False
        if type(value) is str and len(value) <= REMEMBERED_LENGTH:
            if len(good) >= VALUES_PER_PRIMITIVE:
                good.clear()
            good.add(value)
        return True

    return check


def _compile(source: str, name: str, namespace: dict[str, Any], filename: str) -> Any:
    """Define function ``name`` from ``source``, whose globals are ``namespace``.

    The source is built from the R4 tables only: an object's keys select table entries but
    never appear in it (values are named by position), so input cannot inject code.
    """
    local: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace, local)
    return local[name]
