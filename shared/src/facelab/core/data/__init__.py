"""Datasets and data formats: toyfaces, identity folders, MXNet RecordIO, verification sets,
face alignment. Import from the submodules (``facelab.core.data.toyfaces`` ...)."""
