"""FHIRPath compiled to DuckDB SQL over FHIR JSON (typed by the FHIR R4 element model)."""

from mapping.fhirpath.ast import FhirPathError
from mapping.fhirpath.compiler import Compiler, compile_fhirpath
from mapping.fhirpath.parser import parse
from mapping.fhirpath.search import compile_search_expression
from mapping.fhirpath.values import Value, render

__all__ = ["Compiler", "FhirPathError", "Value", "compile_fhirpath", "compile_search_expression", "parse",
           "render"]
