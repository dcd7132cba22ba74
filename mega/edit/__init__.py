"""Editing trained avatars (paper §5): hairstyle swap (:mod:`mega.edit.hairswap`)."""
