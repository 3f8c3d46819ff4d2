"""`refloop demo`: a day of referrals replayed through the real protocols.

    samples.py     where the public sample messages are, and reading them
    rekey.py       a sample with new identifiers and times, its structure untouched
    dicom_dump.py  DCMTK "dump" text (the sample worklist queries) as pydicom datasets
    hl7client.py   an HL7 sender over MLLP (python-hl7 streams) and its ACKs
    modality.py    a modality: worklist query and MPPS over pynetdicom
    messages.py    the day's messages, built from the samples for one referral
    ehr.py         the requester's EHR (receives results, acknowledges) and the department pager
    day.py         the day's script: the referrals, their paths, their intended outcomes
    replay.py      carries the script out and records what happened
    display.py     progress while it runs, the summary at the end
    stack.py       the embedded stack (Temporal + UI, worker, gateways) for the demo
"""
