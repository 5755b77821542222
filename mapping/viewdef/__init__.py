"""SQL-on-FHIR v2 ViewDefinitions compiled to DuckDB SQL over FHIR JSON."""

from mapping.viewdef.compile import Column, CompiledView, compile_view
from mapping.viewdef.run import run_compiled, run_view
from mapping.viewdef.validate import ViewDefinitionError, validate_view

__all__ = ["Column", "CompiledView", "ViewDefinitionError", "compile_view", "run_compiled", "run_view",
           "validate_view"]
