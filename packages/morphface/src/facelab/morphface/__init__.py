"""MorphFace: 3DMM-guided identity-preserving face synthesis with subject-specific style priors.

Modules: morphable, procedural, geometry, raster, shading, render, params, prior, encoder,
guidance, sample, train, toy, bench, cli (see the README).
"""

__version__ = "0.1.0"
