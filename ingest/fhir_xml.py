"""FHIR R4 XML -> the FHIR JSON form (as a Python dict).

The XML and JSON forms differ in ways only the structure definitions can settle: XML
does not say whether an element repeats (JSON needs an array), nor whether ``value="5"``
is a string, an integer or a decimal. Both come from the compiled R4 element tables in
``mapping.validation.structures``, the same tables the validator uses. Conversion rules
(FHIR R4 "XML Representation" / "JSON Representation"):

* values live in ``value`` attributes; ``decimal``/``integer``/``positiveInt``/
  ``unsignedInt`` become JSON numbers and ``boolean`` becomes true/false (a value that is
  not well formed is kept as its string so validation reports it at its location);
* ``id`` attributes and ``extension`` children of primitives go to ``_name``; repeating
  primitives get aligned ``name``/``_name`` arrays with ``null`` holes;
* ``id`` attributes of complex elements and ``url`` of extensions become properties;
* ``contained``, ``Bundle.entry.resource`` and other resource-typed elements unwrap
  the inner resource element and add ``resourceType``;
* the narrative ``div`` is kept as an XHTML string in the default namespace.

The parser is hardened: no DTD loading, no entity expansion, no network, and any
document with a DOCTYPE or ENTITY declaration is refused outright (XXE and "billion
laughs" fail fast with :class:`FhirXmlError`, nothing is expanded). The reverse direction
lives in :mod:`mapping.fhir_xml_write`.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from lxml import etree

from mapping.json_numbers import whole_number
from mapping.validation.structures import KIND_COMPLEX, KIND_PRIMITIVE, KIND_RESOURCE, load_structures

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_FHIR = "{" + FHIR_NS + "}"
_DTD_MARKERS = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})
_INTEGER_TEXT = re.compile(r"-?\d+")
_DECIMAL_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class FhirXmlError(ValueError):
    """The document is not FHIR XML we can (or will) convert."""


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _as_text(raw: bytes) -> str:
    """Decode enough to look for declarations, whatever the (wide) encoding."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return raw.decode(codec, errors="replace")
    head = raw[:4]
    if len(head) == 4 and 0 in head:  # wide encoding without BOM: NUL positions tell which
        if head[1:] == b"\x00\x00\x00":
            codec = "utf-32-le"
        elif head[:3] == b"\x00\x00\x00":
            codec = "utf-32-be"
        else:
            codec = "utf-16-le" if head[1] == 0 else "utf-16-be"
        return raw.decode(codec, errors="replace")
    return raw.decode("latin-1")


def parse_xml(document: bytes | str) -> etree._Element:
    """Parse with the hardened parser; refuse DTDs and entity declarations before parsing.

    libxml2 still expands internal entities inside attribute values even with
    ``resolve_entities=False``, so declarations are refused before the parser runs.
    """
    raw = document.encode("utf-8") if isinstance(document, str) else document
    text = document if isinstance(document, str) else _as_text(raw)
    if _DTD_MARKERS.search(text):
        raise FhirXmlError("DOCTYPE/ENTITY declarations are not allowed in FHIR XML")
    if isinstance(document, str):
        # lxml refuses str input with an encoding declaration; the bytes are UTF-8.
        document = raw
    try:
        tree = etree.fromstring(document, parser=_safe_parser()).getroottree()
    except etree.XMLSyntaxError as error:
        raise FhirXmlError(f"not well-formed XML: {error}") from error
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise FhirXmlError("DOCTYPE declarations are not allowed in FHIR XML")
    return tree.getroot()


def _local_name(element: etree._Element, location: str) -> str:
    tag = element.tag
    if not isinstance(tag, str) or not tag.startswith(_FHIR):
        raise FhirXmlError(f"{location}: element {tag!r} is not in the FHIR namespace {FHIR_NS}")
    return tag[len(_FHIR):]


def _typed(text: str, type_name: str) -> Any:
    if type_name == "boolean":
        return {"true": True, "false": False}.get(text, text)
    if type_name in _INTEGER_TYPES:
        return int(text) if _INTEGER_TEXT.fullmatch(text) else text
    if type_name == "decimal":
        if _INTEGER_TEXT.fullmatch(text):
            return whole_number(text)
        return float(text) if _DECIMAL_TEXT.fullmatch(text) else text
    return text


def xhtml_to_string(div: etree._Element) -> str:
    """Serialize a narrative div with XHTML as the default namespace (as FHIR JSON wants)."""
    clean = etree.Element(f"{{{XHTML_NS}}}div", nsmap={None: XHTML_NS})
    pending = [(div, clean)]
    while pending:
        source, target = pending.pop()
        target.text = source.text
        for key, value in source.attrib.items():
            target.set(key, value)
        for child in source:
            if not isinstance(child.tag, str):
                continue
            copy = etree.SubElement(target, child.tag)
            copy.tail = child.tail
            pending.append((child, copy))
    return etree.tostring(clean, encoding="unicode", with_tail=False)


class _Reader:
    def __init__(self) -> None:
        self.structures = load_structures()

    def resource(self, element: etree._Element, location: str) -> dict[str, Any]:
        resource_type = _local_name(element, location)
        if resource_type not in self.structures.resource_types:
            raise FhirXmlError(f"{location}: unknown resource type {resource_type!r}")
        result: dict[str, Any] = {"resourceType": resource_type}
        self._children(element, resource_type, resource_type, result)
        return result

    def _primitive_extras(self, element: etree._Element, location: str) -> dict[str, Any] | None:
        extras: dict[str, Any] = {}
        if "id" in element.attrib:
            extras["id"] = element.get("id")
        self._children(element, "Element", location, extras)
        return extras or None

    def _children(self, element: etree._Element, type_name: str, location: str, result: dict[str, Any]) -> None:
        table = self.structures.types[type_name]
        primitive_lists: dict[str, tuple[list[Any], list[Any]]] = {}
        for child in element:
            if not isinstance(child.tag, str):
                continue
            if child.tag == f"{{{XHTML_NS}}}div" and "div" in table:
                result["div"] = xhtml_to_string(child)
                continue
            name = _local_name(child, location)
            spec = table.get(name)
            where = f"{location}.{name}"
            if spec is None:
                raise FhirXmlError(f"{where}: unknown element {name!r} in {type_name}")
            if not spec.repeats and (name in result or "_" + name in result):
                raise FhirXmlError(f"{where}: element {name!r} does not repeat")
            if spec.kind == KIND_PRIMITIVE:
                raw = child.get("value")
                value = None if raw is None else _typed(raw, spec.type_name)
                extras = self._primitive_extras(child, where)
                if spec.repeats:
                    values, extra_list = primitive_lists.setdefault(name, ([], []))
                    values.append(value)
                    extra_list.append(extras)
                    continue
                if value is not None:
                    result[name] = value
                if extras is not None:
                    result["_" + name] = extras
                continue
            if spec.kind == KIND_RESOURCE:
                inner = [c for c in child if isinstance(c.tag, str)]
                if len(inner) != 1:
                    raise FhirXmlError(f"{where}: expected exactly one resource inside")
                value = self.resource(inner[0], where)
            elif spec.kind == KIND_COMPLEX:
                value = {}
                for attribute in ("id", "url"):
                    if attribute in child.attrib:
                        value[attribute] = child.get(attribute)
                self._children(child, spec.type_name, where, value)
            if spec.repeats:
                result.setdefault(name, []).append(value)
            else:
                result[name] = value
        for name, (values, extra_list) in primitive_lists.items():
            if any(v is not None for v in values):
                result[name] = values
            if any(e is not None for e in extra_list):
                result["_" + name] = extra_list


def xml_to_resource(document: bytes | str) -> dict[str, Any]:
    """Convert one FHIR XML resource document (any resource, incl. Bundle) to its JSON dict."""
    root = parse_xml(document)
    return _Reader().resource(root, _root_location(root))


def _root_location(root: etree._Element) -> str:
    tag = root.tag if isinstance(root.tag, str) else ""
    return tag.rsplit("}", 1)[-1] or "Resource"
