"""The synthetic world benchmark: procedural scenes, exact ray casting, pixel-level GT.

``generate_pair(preset, split, area, index, seed, epoch)`` returns a ground image
(KITTI-like pinhole or VIGOR-like panorama), a north-up satellite tile centred on the
noisy prior, the pose (design.md ``meta.json`` keys), the ground-to-satellite pixel
correspondences and the satellite surface-height map. Presets mirror the KITTI and VIGOR
protocols (:mod:`.presets`).

Modules, in pipeline order:

- scene: :mod:`.style` (area distributions), :mod:`.roads` (street networks),
  :mod:`.ground` (ground distance fields), :mod:`.lots`, :mod:`.buildings`,
  :mod:`.houses`, :mod:`.furniture`, :mod:`.traffic`, :mod:`.clutter` (layout), into
  :mod:`.primitives` via :mod:`.builder`; :mod:`.world` ties them together.
- rays: :mod:`.kernels` (intersection kernels), :mod:`.raycast` (level ground cameras,
  with :mod:`.camera_rays`), :mod:`.topdown` (satellite), :mod:`.occlusion` (shadows and
  visibility from above).
- appearance: :mod:`.noise`, :mod:`.patterns`, :mod:`.ground_materials`,
  :mod:`.materials`, :mod:`.shading`, :mod:`.render`.
- ground truth and the public entry point: :mod:`.generate`.
"""

from cvloc.data.synthetic.generate import SynthPair, generate_pair
from cvloc.data.synthetic.presets import PRESETS, PriorProtocol, SynthPreset

__all__ = ["PRESETS", "PriorProtocol", "SynthPair", "SynthPreset", "generate_pair"]
