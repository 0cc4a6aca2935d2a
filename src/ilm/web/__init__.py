"""The HTTP front-end (FastAPI): DICOMweb STOW-RS and a health check."""

from ilm.web.app import create_app

__all__ = ["create_app"]
