"""cvloc: fine-grained cross-view camera localization.

Estimate the 3-DoF pose (position on a satellite image, heading) of a ground camera
(pinhole or 360-degree panorama) and explain it with pixel-level ground-to-satellite
correspondences. The conventions (frames, units, yaw) are documented in
``docs/conventions.md`` and on every geometry function.
"""

__version__ = "0.1.0"
