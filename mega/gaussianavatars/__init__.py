"""GaussianAvatars (Qian et al., CVPR 2024): Gaussians rigged to FLAME triangles, the baseline of Table 1."""
