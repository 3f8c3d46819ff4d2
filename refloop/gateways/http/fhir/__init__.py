"""FHIR R4 resources to loop events: parse (fhir.resources.R4B), correlate, translate, answer."""
