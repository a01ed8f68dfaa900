"""One synthetic scene: style, streets, ground fields, primitives, camera and lighting.

A scene is a deterministic function of its scene seed (a hash of seed, split, area and
index), the area and the camera model: the streets, buildings and vegetation come from
one random stream, the camera placement from another, the lighting from a third. It
covers a square of half size ``extent`` around the camera, large enough that the
satellite tile (centred on the prior, up to the protocol's shift away) plus a 40 m margin
lies inside, so the ground camera sees realistic distances in every direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.buildings import town_buildings
from cvloc.data.synthetic.clutter import add_clutter
from cvloc.data.synthetic.furniture import add_vegetation
from cvloc.data.synthetic.ground import GroundFields, build_fields, with_paved
from cvloc.data.synthetic.houses import suburb_houses
from cvloc.data.synthetic.lots import CURB_M
from cvloc.data.synthetic.noise import stable_seed
from cvloc.data.synthetic.presets import SynthPreset
from cvloc.data.synthetic.primitives import Boxes, Solids
from cvloc.data.synthetic.roads import (
    LANE_M,
    PARKING_LANE_M,
    RoadNetwork,
    suburb_roads,
    town_roads,
)
from cvloc.data.synthetic.style import Style, sample_style
from cvloc.data.synthetic.traffic import add_cars, add_poles

MARGIN_M = 40.0  # scene beyond every satellite tile edge
CAMERA_SLACK_M = 13.0  # bound on |camera xy|: 4 m along street 0, lane or sidewalk across


@dataclass(frozen=True)
class Camera:
    """The ground camera in the scene frame.

    Attributes:
        xy: (2,) position, metres (x east, y north).
        yaw_deg: compass heading of the optical axis, degrees clockwise from north.
        height_m: camera centre height above the ground.
        road: index of the street it is on; s: its arc length there;
        direction: +1 along the street's polyline direction, -1 against it.
    """

    xy: np.ndarray
    yaw_deg: float
    height_m: float
    road: int
    s: float
    direction: int


@dataclass(frozen=True)
class Light:
    """Lighting of one view (linear radiance units).

    Attributes:
        sun_dir: (3,) unit vector towards the sun (x east, y north, z up).
        sun: (3,) sun irradiance colour (zero when overcast).
        sky: (3,) sky ambient colour.
        bounce: (3,) light bounced off the ground (lights downward-facing surfaces).
    """

    sun_dir: np.ndarray
    sun: np.ndarray
    sky: np.ndarray
    bounce: np.ndarray


@dataclass(frozen=True)
class World:
    """A complete scene.

    Attributes:
        seed: the scene seed.
        extent: half size of the square scene, metres.
        style: the area-dependent style.
        net: the streets.
        fields: the ground distance fields.
        boxes: frustum boxes. solids: solids of revolution.
        camera: the ground camera.
        ground_light: lighting when the ground image was taken.
        sat_light: lighting when the satellite image was taken.
    """

    seed: int
    extent: float
    style: Style
    net: RoadNetwork
    fields: GroundFields
    boxes: Boxes
    solids: Solids
    camera: Camera
    ground_light: Light
    sat_light: Light


def scene_extent(preset: SynthPreset) -> float:
    """Half size of the scene square for a preset, metres.

    Convention: a KITTI-style shift is in the heading frame, so it reaches sqrt(2) times
    its range along an axis; a VIGOR-style shift is along the axes.

    Args:
        preset: the preset (tile size and prior shift range).

    Returns:
        camera slack + largest tile-centre offset per axis + half tile + margin.
    """
    shift = preset.prior.shift_range_m * (math.sqrt(2) if preset.prior.kind == "kitti" else 1.0)
    return math.ceil(CAMERA_SLACK_M + shift + preset.sat_half_extent_m + MARGIN_M)


def place_camera(
    rng: np.random.Generator, net: RoadNetwork, style: Style, preset: SynthPreset
) -> Camera:
    """Put the camera on street 0 near the scene centre, in a lane or on a sidewalk.

    Convention: right-hand traffic: driving along the polyline the camera is right of
    the centre line; yaw in compass degrees (clockwise from north), wrapped.

    Args:
        rng: random generator.
        net: the streets (street 0 passes through the origin).
        style: the scene style (sidewalk geometry).
        preset: camera model, height and sidewalk probability.

    Returns:
        The camera.
    """
    s = float(net.project(0, np.zeros((1, 2)))[0][0] + rng.uniform(-4.0, 4.0))
    p, t = net.frames(0, np.array([s]))
    direction = int(rng.choice([-1, 1]))
    hw = net.half_width[0]
    if rng.random() < preset.on_sidewalk_prob:
        side = rng.choice([-1, 1])
        lateral = side * (hw + CURB_M + style.verge_m + style.sidewalk_m * rng.uniform(0.35, 0.65))
    else:
        lane = int(rng.integers(net.lanes(0)))
        limit = hw - PARKING_LANE_M * net.parking[0] - 1.0
        lateral = direction * min(LANE_M * (lane + 0.5) + rng.uniform(-0.4, 0.4), limit)
    xy = p[0] + np.array([t[0, 1], -t[0, 0]]) * lateral
    heading = np.degrees(np.arctan2(t[0, 0], t[0, 1])) + (0.0 if direction > 0 else 180.0)
    if preset.camera_model == "panorama":
        yaw = rng.uniform(-180.0, 180.0)
    else:
        yaw = heading + rng.uniform(-3.0, 3.0)
    yaw = 180.0 - (180.0 - yaw) % 360.0
    return Camera(xy, float(yaw), preset.camera_height_m, 0, s, direction)


def _light(
    rng: np.random.Generator,
    elevation_deg: tuple[float, float],
    azimuth_deg: tuple[float, float],
    overcast_prob: float,
) -> Light:
    """A sunny or overcast sky: sun direction and irradiance colours."""
    az, el = np.radians(rng.uniform(*azimuth_deg)), np.radians(rng.uniform(*elevation_deg))
    sun_dir = np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])
    overcast = rng.random() < overcast_prob
    warm = np.array([1.0, 0.95, 0.86]) * rng.uniform(0.95, 1.05, 3)
    sun = np.zeros(3) if overcast else warm * rng.uniform(2.6, 3.2)
    sky = np.array([0.55, 0.65, 0.85]) * (rng.uniform(0.55, 0.7) if not overcast else 1.4)
    return Light(sun_dir, sun, sky, np.array([0.22, 0.21, 0.19]) * rng.uniform(0.8, 1.2))


def build_world(scene_seed: int, area: str, preset: SynthPreset) -> World:
    """Generate a scene.

    Args:
        scene_seed: the scene seed (see :func:`cvloc.data.synthetic.noise.stable_seed`).
        area: ``"same"`` or ``"cross"``.
        preset: the preset (camera model and height, tile size, prior protocol).

    Returns:
        The world.
    """
    extent = scene_extent(preset)
    rng = np.random.default_rng(stable_seed("layout", scene_seed))
    style = sample_style(rng, area)
    net = (town_roads if style.layout == "town" else suburb_roads)(rng, extent)
    fields = build_fields(net, extent)
    cam_rng = np.random.default_rng(stable_seed("camera", scene_seed, preset.camera_model))
    camera = place_camera(cam_rng, net, style, preset)
    builder = PrimitiveBuilder()
    place = town_buildings if style.layout == "town" else suburb_houses
    extras = place(rng, net, fields, style, camera.xy, builder)
    add_vegetation(rng, net, fields, style, extras, camera.xy, builder)
    add_cars(
        rng,
        net,
        fields,
        style,
        extras,
        (camera.road, camera.s, camera.direction),
        camera.xy,
        builder,
    )
    add_poles(rng, net, fields, extras, camera.xy, builder)
    add_clutter(rng, net, fields, style, extras, camera.xy, builder)
    fields = with_paved(fields, np.asarray(extras.paved))
    boxes, solids = builder.build()
    light_rng = np.random.default_rng(stable_seed("light", scene_seed))
    return World(
        seed=scene_seed,
        extent=extent,
        style=style,
        net=net,
        fields=fields,
        boxes=boxes,
        solids=solids,
        camera=camera,
        ground_light=_light(light_rng, (20.0, 65.0), (-180.0, 180.0), 0.15),
        sat_light=_light(light_rng, (35.0, 65.0), (100.0, 260.0), 0.0),
    )
