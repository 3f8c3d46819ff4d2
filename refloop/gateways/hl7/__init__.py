"""HL7 v2 over MLLP: translate messages into typed events, acknowledge in HL7 terms.

    decode.py      bytes -> text (MSH-18 character set, CR/LF/CRLF separators)
    translate.py   text -> Translation (events + correlation keys, or an Hl7Error); pure
    orders.py · scheduling.py · adt.py · results.py   one translator per message family
    ack.py         ACK with MSA and ERR
    receiver.py    one message: translate -> Intake.receive -> ACK (no sockets)
    server.py      the asyncio MLLP listener (`serve(settings, stop)` for `refloop dev`)
"""
