"""Gaussian hair: the canonical 3DGS hair, its initialisation and densification, the rigid alignment to each frame and the non-rigid deformation MLP."""
