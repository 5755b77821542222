"""FHIR R4 structural validation of JSON resources (see docs/validation.md)."""

from mapping.validation.validator import RESOURCE_TYPES, operation_outcome, validate_resource

__all__ = ["RESOURCE_TYPES", "operation_outcome", "validate_resource"]
