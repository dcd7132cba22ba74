"""Data: the camera type, the GaussianAvatars-layout reader and writer, MeGA's extras.

The exported names are imported on first use (``mega.lazy``): the workflow's start-up reads
``mega.data.overlay`` without loading torch."""

from mega.lazy import lazy_attributes

__all__, __getattr__ = lazy_attributes(__name__, {
    "mega.data.camera": ("Camera",),
    "mega.data.gaussian_avatars": ("SubjectDataset", "collate_samples"),
})
