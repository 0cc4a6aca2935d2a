"""DICOM: attribute extraction (pydicom) and the network front-end (pynetdicom)."""
