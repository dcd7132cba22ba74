"""Data: the camera type, the GaussianAvatars-layout reader and writer, MeGA's extras."""

from mega.data.camera import Camera
from mega.data.gaussian_avatars import SubjectDataset, collate_samples

__all__ = ["Camera", "SubjectDataset", "collate_samples"]
