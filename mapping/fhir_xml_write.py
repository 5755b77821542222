"""FHIR JSON (a dict) -> FHIR R4 XML, for ``application/fhir+xml`` responses.

FHIR XML must list elements in the order of the structure definition, which JSON does
not preserve, so the writer walks each type's compiled element table (definition order)
and emits what the resource holds. Primitive values go to ``value`` attributes,
``_name`` entries become the primitive's ``id`` attribute and ``extension`` children,
``id`` of complex elements and ``url`` of extensions are attributes, nested resources are
wrapped in their element (``<contained><Patient>…</Patient></contained>``), and the
narrative ``div`` string is parsed (hardened parser, no DTDs) and embedded as XHTML.
The reader is :mod:`ingest.fhir_xml`.
"""

from __future__ import annotations

import math
from typing import Any

from lxml import etree

from mapping.validation.structures import KIND_PRIMITIVE, KIND_RESOURCE, load_structures

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"


class FhirXmlWriteError(ValueError):
    """The JSON cannot be written as FHIR XML (unknown element, wrong shape)."""


def _xhtml_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _format(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FhirXmlWriteError(f"{value} is not a FHIR decimal")
        return repr(value)
    return str(value)


class _Writer:
    def __init__(self) -> None:
        self.structures = load_structures()

    def resource(self, resource: dict[str, Any], parent: etree._Element | None, location: str) -> etree._Element:
        resource_type = resource.get("resourceType")
        if resource_type not in self.structures.resource_types:
            raise FhirXmlWriteError(f"{location}: unknown resourceType {resource_type!r}")
        tag = f"{{{FHIR_NS}}}{resource_type}"
        element = (etree.Element(tag, nsmap={None: FHIR_NS}) if parent is None
                   else etree.SubElement(parent, tag))
        self._content(resource, resource_type, element, resource_type, is_resource=True)
        return element

    def _content(self, obj: dict[str, Any], type_name: str, element: etree._Element, location: str,
                 is_resource: bool = False) -> None:
        table = self.structures.types[type_name]
        known = set(table)
        for key in obj:
            bare = key[1:] if key.startswith("_") else key
            if bare not in known and not (is_resource and key == "resourceType"):
                raise FhirXmlWriteError(f"{location}.{key}: unknown element in {type_name}")
        for name, spec in table.items():
            if not is_resource and (name == "id" or (name == "url" and type_name == "Extension")):
                if name in obj:
                    element.set(name, _format(obj[name]))
                continue
            value = obj.get(name)
            extras = obj.get("_" + name)
            if value is None and extras is None:
                continue
            where = f"{location}.{name}"
            if spec.type_name == "xhtml":
                element.append(self._xhtml(value, where))
                continue
            if spec.kind == KIND_PRIMITIVE:
                self._primitives(element, name, value, extras, spec.repeats, where)
                continue
            items = value if spec.repeats else [value]
            if not isinstance(items, list):
                raise FhirXmlWriteError(f"{where}: expected an array")
            for index, item in enumerate(items):
                child = etree.SubElement(element, f"{{{FHIR_NS}}}{name}")
                item_location = f"{where}[{index}]" if spec.repeats else where
                if not isinstance(item, dict):
                    raise FhirXmlWriteError(f"{item_location}: expected an object")
                if spec.kind == KIND_RESOURCE:
                    self.resource(item, child, item_location)
                else:
                    self._content(item, spec.type_name, child, item_location)

    def _primitives(self, element: etree._Element, name: str, value: Any, extras: Any, repeats: bool,
                    where: str) -> None:
        if repeats:
            values = value if isinstance(value, list) else [None] * len(extras or [])
            extra_list = extras if isinstance(extras, list) else [None] * len(values)
            if len(values) != len(extra_list):
                raise FhirXmlWriteError(f"{where}: {name} and _{name} differ in length")
        else:
            values, extra_list = [value], [extras]
        for item, extra in zip(values, extra_list, strict=True):
            child = etree.SubElement(element, f"{{{FHIR_NS}}}{name}")
            if extra is not None:
                self._content(extra, "Element", child, where)
            if item is not None:
                child.set("value", _format(item))

    @staticmethod
    def _xhtml(value: Any, where: str) -> etree._Element:
        if not isinstance(value, str):
            raise FhirXmlWriteError(f"{where}: narrative div must be a string")
        if "<!" in value and ("DOCTYPE" in value.upper() or "ENTITY" in value.upper()):
            raise FhirXmlWriteError(f"{where}: DOCTYPE/ENTITY not allowed in narrative")
        try:
            div = etree.fromstring(value.encode("utf-8"), parser=_xhtml_parser())
        except etree.XMLSyntaxError as error:
            raise FhirXmlWriteError(f"{where}: narrative div is not well-formed XHTML: {error}") from error
        if div.tag != f"{{{XHTML_NS}}}div":
            raise FhirXmlWriteError(f"{where}: narrative must be an XHTML <div>")
        return div


def resource_to_xml_element(resource: dict[str, Any]) -> etree._Element:
    """The resource as an lxml element (for callers composing larger documents)."""
    return _Writer().resource(resource, None, str(resource.get("resourceType", "Resource")))


def resource_to_xml(resource: dict[str, Any], *, pretty: bool = False) -> bytes:
    """Serialize one resource (any type, incl. Bundle) as UTF-8 FHIR XML with declaration."""
    return etree.tostring(resource_to_xml_element(resource), xml_declaration=True, encoding="UTF-8",
                          pretty_print=pretty)
