"""Editing trained avatars (paper §5): hairstyle swap (:mod:`mega.edit.hairswap`) and texture
painting (:mod:`mega.edit.paint`, its settings in :mod:`mega.edit.paint_config`)."""
