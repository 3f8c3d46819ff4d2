"""DICOM gateways for the modalities: Modality Worklist and MPPS."""
