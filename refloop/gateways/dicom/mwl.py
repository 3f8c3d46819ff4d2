"""Modality Worklist SCP (C-FIND, Modality Worklist Information Model - FIND): the scheduled
procedure steps of loops that are scheduled or arrived, read from the SQL read model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import tzinfo

import structlog
from pydicom import Dataset
from pydicom.tag import Tag

from refloop.domain.loop import Loop, Stage
from refloop.gateways.dicom import charset
from refloop.gateways.dicom.items import worklist_item
from refloop.gateways.dicom.matching import SPS, QueryError, answer, matches
from refloop.gateways.dicom.status import failure
from refloop.store.imaging import ImagingStore

log = structlog.get_logger()

PENDING, CANCELLED = 0xFF00, 0xFE00
UNABLE_TO_PROCESS, INTERNAL_FAILURE, NOT_MWL_IDENTIFIER = 0xC000, 0xC001, 0xA900
_MODALITY, _ACCESSION = Tag(0x0008, 0x0060), Tag(0x0008, 0x0050)


def _exact(query: Dataset, tag) -> str:
    """A single, wildcard-free value of a key (flat or in the SPS item): usable to narrow in SQL."""
    elem = query.get(tag)
    if elem is None and query.get(SPS) is not None and query[SPS].value:
        elem = query[SPS].value[0].get(tag)
    value = elem.value if elem is not None else None
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return value if value and "*" not in value and "?" not in value and "\\" not in value else ""


class WorklistProvider:
    CACHE_SIZE = 10_000

    def __init__(self, imaging: ImagingStore, tz: tzinfo, keep_started: bool = False):
        self.imaging = imaging
        self.tz = tz
        self.keep_started = keep_started
        # Modalities poll; loops change seldom. Building a pydicom item is most of a query's
        # cost, so items are kept per (referral, state) and rebuilt when the state changes.
        self._items: OrderedDict[tuple[str, int], Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def _item(self, referral_id: str, state_json: str) -> Dataset:
        key = (referral_id, hash(state_json))
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        item = worklist_item(Loop.model_validate_json(state_json), self.tz)
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.CACHE_SIZE:
                self._items.popitem(last=False)
        return item

    def stages(self) -> list[str]:
        stages = [Stage.SCHEDULED.value, Stage.ARRIVED.value]
        return stages + [Stage.IN_PROGRESS.value] if self.keep_started else stages

    def find(self, query: Dataset) -> Iterator[Dataset]:
        """Responses for a query, each with exactly its keys. Raises QueryError on bad key values."""
        peer = charset.declared(query)
        states = self.imaging.loop_states_in_stages(
            self.stages(),
            modality=_exact(query, _MODALITY),
            accession_number=_exact(query, _ACCESSION),
            exclude_started=not self.keep_started,
        )
        for referral_id, state_json in states:
            item = self._item(referral_id, state_json)
            if matches(query, item):
                yield charset.with_charset(answer(query, item), peer)

    def handle_find(self, event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """pynetdicom EVT_C_FIND handler (runs in the association's thread)."""
        calling = event.assoc.requestor.ae_title
        try:
            query = event.identifier
            query.decode()  # surfaces an undecodable identifier here, not while matching
        except Exception as err:
            log.warning("mwl_bad_identifier", calling_ae=calling, error=type(err).__name__)
            yield failure(NOT_MWL_IDENTIFIER, "identifier cannot be decoded"), None
            return
        found = 0
        try:
            for response in self.find(query):
                if event.is_cancelled:
                    yield CANCELLED, None
                    return
                found += 1
                yield PENDING, response
        except QueryError as err:
            log.info("mwl_query_refused", calling_ae=calling, error=str(err))
            yield failure(UNABLE_TO_PROCESS, str(err)), None
            return
        except Exception as err:  # the store is down: say so, keep the listener alive
            log.exception("mwl_query_failed", calling_ae=calling)
            yield failure(INTERNAL_FAILURE, f"worklist unavailable: {type(err).__name__}"), None
            return
        log.info("mwl_query", calling_ae=calling, matches=found)
        yield 0x0000, None
