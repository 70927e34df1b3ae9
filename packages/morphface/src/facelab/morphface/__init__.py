"""MorphFace: 3DMM-guided identity-preserving face synthesis (filled in below)."""
