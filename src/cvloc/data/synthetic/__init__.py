"""The synthetic world benchmark: procedural scenes, exact ray casting, pixel-level GT.

``generate_pair(preset, split, area, index, seed, epoch)`` returns a ground image
(pinhole or panorama), a north-up satellite tile centred on the noisy prior, the pose
(design.md ``meta.json`` keys), the per-pixel ground-to-satellite correspondences and the
satellite surface-height map. Presets mirror the KITTI and VIGOR protocols.
"""

from cvloc.data.synthetic.generate import SynthPair, generate_pair
from cvloc.data.synthetic.presets import PRESETS, PriorProtocol, SynthPreset

__all__ = ["PRESETS", "PriorProtocol", "SynthPair", "SynthPreset", "generate_pair"]
