"""Protocol gateways: translate HL7 v2, FHIR/JSON and DICOM into typed events; nothing more."""
