"""One DICOM listener for the modalities: Modality Worklist (C-FIND), MPPS (N-CREATE/N-SET)
and Verification (C-ECHO), under one AE title and port from Settings."""

from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo

import structlog
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

from refloop.config import Settings
from refloop.gateways.dicom.mpps import MppsService
from refloop.gateways.dicom.mwl import WorklistProvider
from refloop.gateways.intake import Intake
from refloop.store.imaging import ImagingStore
from refloop.store.repo import Store

log = structlog.get_logger()


class DicomGateway:
    def __init__(self, store: Store, intake: Intake, *, ae_title: str, host: str = "127.0.0.1", port: int = 0, timezone: str = "UTC", keep_started: bool = False):
        imaging = ImagingStore(store.engine)
        tz = ZoneInfo(timezone)
        self.worklist = WorklistProvider(imaging, tz, keep_started)
        self.intake = intake
        self.imaging = imaging
        self.tz = tz
        self.ae_title = ae_title
        self.address = (host, port)
        self._server = None
        self.mpps: MppsService | None = None

    def start(self) -> int:
        """Listen (needs a running event loop: MPPS hands events to it). Returns the bound port."""
        self.mpps = MppsService(self.imaging, self.intake, asyncio.get_running_loop(), self.tz)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # a modality configured for another AE title is told so at once
        for sop_class in (ModalityWorklistInformationFind, ModalityPerformedProcedureStep, Verification):
            ae.add_supported_context(sop_class)
        handlers = [
            (evt.EVT_C_FIND, self.worklist.handle_find),
            (evt.EVT_N_CREATE, self.mpps.on_create),
            (evt.EVT_N_SET, self.mpps.on_set),
        ]
        self._server = ae.start_server(self.address, block=False, evt_handlers=handlers)
        port = self._server.server_address[1]
        log.info("dicom_listening", ae_title=self.ae_title, host=self.address[0], port=port)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """`refloop dev` service: the DICOM listener until `stop` is set."""
    from refloop.store.db import make_engine
    from refloop.temporal import connect

    client = await connect(settings.temporal_address, settings.namespace)
    store = Store(make_engine(settings.db_url))
    intake = Intake(client, store, settings.task_queue, settings.policy())
    gateway = DicomGateway(
        store,
        intake,
        ae_title=settings.dicom_ae_title,
        host=settings.bind_host,
        port=settings.dicom_port,
        timezone=settings.dicom_timezone,
        keep_started=settings.mwl_keep_started,
    )
    gateway.start()
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(gateway.stop)
