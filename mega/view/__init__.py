"""The interactive viewer of trained avatars (`mega view`)."""
