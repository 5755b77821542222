"""HL7 v2 → FHIR R4 mapping driven by the HL7 v2-to-FHIR IG's tables.

``map_grouped(msg, root_group, structure, event=...) -> MappingResult`` maps a message
already grouped by its structure; ``ingest.hl7v2.map_message`` does parse + group +
map in one call. The tables are compiled from the IG's CSVs by ``build_tables``.
"""

from mapping.v2.messages import MappingResult, forget, is_mapped, map_grouped

__all__ = ["MappingResult", "forget", "is_mapped", "map_grouped"]
