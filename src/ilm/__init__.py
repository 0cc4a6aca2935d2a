"""ilm: image lifecycle management for DICOM archives."""

__version__ = "0.1.0"
__all__ = ["__version__"]
