"""HTTP gateway: JSON events, FHIR R4 resources, referral state and acknowledgments (FastAPI)."""

from refloop.gateways.http.app import create_app

__all__ = ["create_app"]
