"""What refloop sends to the requester: results (FHIR DiagnosticReport / HL7 ORU^R01) and
status along the way (FHIR Task / HL7 ORC-1 SC), and the transports that carry them."""
