r"""``cvloc localize``: localize your own ground image on a north-up satellite image.

Examples::

    cvloc localize --checkpoint denseflow-synth-kitti-small --ground g.png --satellite s.png \
        --intrinsics K.json --m-per-px 0.39 --camera-height-m 1.65 --out out/
    cvloc localize --method classical --ground pano.jpg --satellite tile.png --panorama \
        --zoom 20 --sat-center-latlon 41.8800,-87.6300 --camera-height-m 2 --out out/
    cvloc localize --checkpoint NAME --pairs pairs.csv --fov-deg 90 --out results/

Writes ``pose.json``, ``correspondences.csv`` and ``visualization.png`` to ``--out``
(:class:`cvloc.localize_result.LocalizationResult`). Batch mode (``--pairs CSV``): one pair
per row, with the options as columns (:data:`COLUMNS`; paths relative to the CSV's folder,
empty cells and missing columns take the command-line value), one output folder per row
(``name`` or the row number) and ``results.csv`` with one line per row. A bad row is
reported with its row number and reason and skipped. Exit status: 0; 1 when some rows
failed; 2 for a user error of the command itself (one line, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from cvloc.cli import UsageError
from cvloc.eval_command import (
    add_refine_arguments,
    given_refinement,
    refinement_usage_error,
    refuse_refinement_options,
)

EXIT_ROWS_FAILED = 1
METHODS = ("classical", "prior")
COLUMNS = (
    "name", "ground", "satellite", "fov_deg", "intrinsics", "panorama", "m_per_px", "zoom",
    "sat_center_lat", "sat_center_lon", "scale", "camera_height_m", "prior_u", "prior_v",
    "prior_yaw_deg", "search_radius_m",
)  # fmt: skip
SUMMARY = (
    "row", "name", "status", "error", "out_dir", "camera_u", "camera_v", "x_m", "y_m",
    "yaw_deg", "lat", "lon", "confidence", "num_confident_matches", "sigma_major_m",
)  # fmt: skip
# The API's argument names (prefixes of its error messages) as options, where the option is
# not "--" + the name with dashes.
OPTIONS = {
    "K": "--intrinsics", "m_per_px / zoom": "--m-per-px / --zoom", "camera": "camera",
    "prior_u": "--prior-uv", "prior_v": "--prior-uv", "prior": "--prior-uv / --prior-yaw-deg",
    "sat_center_lat": "--sat-center-latlon", "sat_center_lon": "--sat-center-latlon",
}  # fmt: skip
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")
PAIRED = {
    "sat_center_latlon": ("sat_center_lat", "sat_center_lon"),
    "prior_uv": ("prior_u", "prior_v"),
}
GROUPS = (("fov_deg", "intrinsics", "panorama"), ("m_per_px", "zoom"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cvloc localize``.

    Args:
        parser: the sub-command parser.
    """
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="NAME_OR_PATH", help="weights name or file")
    model.add_argument("--method", choices=METHODS, help="a non-learned method instead")
    parser.add_argument("--ground", metavar="IMG", help="the ground image")
    parser.add_argument("--satellite", metavar="IMG", help="the north-up satellite image")
    parser.add_argument("--pairs", metavar="CSV", help=f"batch: columns {', '.join(COLUMNS)}")
    cam = parser.add_argument_group("ground camera (one of)")
    cam.add_argument("--fov-deg", type=float, metavar="F", help="pinhole: horizontal FoV")
    cam.add_argument("--intrinsics", metavar="K.json", help="pinhole: JSON 3x3 K, list of rows")
    cam.add_argument("--panorama", action="store_true", help="equirectangular 360 (W = 2 H)")
    sat = parser.add_argument_group("satellite resolution: --m-per-px, or --zoom with a centre")
    sat.add_argument("--m-per-px", type=float, metavar="M", help="of the given image")
    sat.add_argument("--zoom", type=float, metavar="Z", help="Web Mercator zoom level")
    sat.add_argument("--sat-center-latlon", metavar="LAT,LON", help="tile centre: gives lat/lon")
    sat.add_argument("--scale", type=int, metavar="S", help="tile pixel density (default 1)")
    parser.add_argument("--camera-height-m", type=float, metavar="H", help="default: the model's")
    prior = parser.add_argument_group("prior (default: the tile centre, any heading)")
    prior.add_argument("--prior-uv", metavar="U,V", help="satellite pixels of the given image")
    prior.add_argument("--prior-yaw-deg", type=float, metavar="Y", help="clockwise from north")
    prior.add_argument("--search-radius-m", type=float, metavar="R", help="default: the model's")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-visualization", action="store_true", help="skip the figures")
    add_refine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``cvloc localize``.

    Args:
        args: the parsed options of :func:`add_arguments`.

    Returns:
        0 on success, 1 when some batch rows failed.

    Raises:
        UsageError: a problem with the user's input (``cvloc`` prints it, exit status 2).
    """
    defaults = _cli_fields(args)
    if args.pairs is None and not (args.ground and args.satellite):
        raise UsageError("--ground and --satellite are required (or --pairs CSV)")
    localizer = _localizer(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it ({exc.strerror})") from exc
    if args.pairs is not None:
        return _run_batch(localizer, Path(args.pairs), defaults, out, not args.no_visualization)
    result = _localize(localizer, defaults, {})
    result.save(out, visualization=not args.no_visualization)
    for warning in result.warnings:
        print(f"cvloc localize: warning: {warning}", file=sys.stderr)
    (u, v), (x, y) = result.camera_uv, result.camera_xy_m
    geo = "" if result.latlon is None else ", lat {:.7f} lon {:.7f}".format(*result.latlon)
    print(f"camera at u={u:.1f} v={v:.1f} px, x={x:.2f} m east, y={y:.2f} m north{geo}, "
          f"yaw {result.yaw_deg:.1f} deg")  # fmt: skip
    # Significant digits, not decimals: FineMatch's confidences are often below 0.01 on good
    # poses (their scale is the model's, README: reading the confidence).
    print(f"confidence {result.confidence:.3g}, {result.num_confident_matches} confident "
          f"matches; wrote {out}")  # fmt: skip
    return 0


def _cli_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the fields of a pair (the CSV columns)."""
    fields = {k: getattr(args, k) for k in COLUMNS if getattr(args, k, None) is not None}
    for option, keys in PAIRED.items():
        text = getattr(args, option)
        if text is not None:
            values = text.split(",")
            if len(values) != 2:
                raise UsageError(f"{_option(option)}: expected two numbers A,B, got {text!r}")
            fields.update(zip(keys, values, strict=True))
    return {k: v for k, v in fields.items() if v is not None and v is not False}


def _localizer(args: argparse.Namespace) -> Any:
    import torch

    from cvloc.checkpoint import CheckpointError
    from cvloc.localize import Localizer

    if args.method is not None:
        refuse_refinement_options(args)
        return Localizer.classical() if args.method == "classical" else Localizer.prior_baseline()
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device!r}: CUDA is not available on this machine")
    try:
        return Localizer.from_pretrained(args.checkpoint, device, given_refinement(args))
    except (FileNotFoundError, CheckpointError) as exc:
        raise UsageError(f"--checkpoint: {exc}") from exc
    except ValueError as exc:  # an out-of-range refinement option
        raise refinement_usage_error(exc) from exc


def _option(name: str) -> str:
    return OPTIONS.get(name, "--" + name.replace("_", "-"))


def _localize(localizer: Any, fields: dict[str, Any], labels: dict[str, str]) -> Any:
    """Localize one pair described by its fields; user errors become :class:`UsageError`.

    ``labels`` names the fields that came from a CSV row (else: the option).
    """
    from cvloc.data.images import SampleError
    from cvloc.localize import LocalizeInputError, Panorama, Pinhole, Prior

    def label(name: str) -> str:
        return labels.get(name) or _option(name)

    def number(key: str) -> float | None:
        value = fields.get(key)
        try:
            return None if value in (None, "") else float(value)
        except ValueError:
            raise UsageError(f"{label(key)}: expected a number, got {value!r}") from None

    panorama = str(fields.get("panorama", "")).lower()
    if panorama not in (*TRUE, *FALSE, ""):
        raise UsageError(f"{label('panorama')}: expected true or false, got {panorama!r}")
    fields = {**fields, "panorama": panorama in TRUE}
    try:
        cameras = [k for k in ("fov_deg", "intrinsics", "panorama") if fields.get(k)]
        if len(cameras) != 1:
            which = "is missing" if not cameras else f"is given twice ({', '.join(cameras)})"
            raise UsageError(
                f"the ground camera {which}: give exactly one of --fov-deg F, --intrinsics "
                "K.json or --panorama (columns fov_deg, intrinsics, panorama)"
            )
        if cameras[0] == "panorama":
            camera = Panorama()
        elif cameras[0] == "fov_deg":
            camera = Pinhole(fov_deg=number("fov_deg"))
        else:
            camera = _read_intrinsics(Path(fields["intrinsics"]), label("intrinsics"))
        center = [number("sat_center_lat"), number("sat_center_lon")]
        uv = [number("prior_u"), number("prior_v")]
        scale = number("scale")
        return localizer.localize(
            fields.get("ground"),
            fields.get("satellite"),
            camera,
            m_per_px=number("m_per_px"),
            zoom=number("zoom"),
            sat_center_latlon=None if None in center else tuple(center),
            scale=1 if scale is None else scale,
            prior=Prior(uv=None if None in uv else tuple(uv), yaw_deg=number("prior_yaw_deg")),
            camera_height_m=number("camera_height_m"),
            search_radius_m=number("search_radius_m"),
        )
    except LocalizeInputError as exc:
        name, _, reason = str(exc).partition(": ")
        raise UsageError(f"{label(name)}: {reason}") from exc
    except SampleError as exc:
        raise UsageError(str(exc)) from exc


def _read_intrinsics(path: Path, label: str) -> Any:
    from cvloc.localize import LocalizeInputError, Pinhole

    expected = "a JSON 3x3 matrix as a list of 3 rows, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]"
    try:
        return Pinhole(K=json.loads(path.read_text()))
    except OSError as exc:
        raise UsageError(f"{label} {path}: cannot read it ({exc.strerror})") from exc
    except (ValueError, LocalizeInputError) as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"{label} {path}: expected {expected}") from exc


def _run_batch(
    localizer: Any, path: Path, defaults: dict[str, Any], out: Path, figures: bool
) -> int:
    from tqdm import tqdm

    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"--pairs {path}: cannot read it as CSV ({exc})") from exc
    unknown = sorted(set(reader.fieldnames or ()) - set(COLUMNS))
    if not rows or unknown:
        problem = f"unknown columns {unknown}" if unknown else "no rows"
        raise UsageError(f"--pairs {path}: {problem}; the columns are {', '.join(COLUMNS)}")
    summary, failed, names = [], 0, set()
    for i, (line, row) in enumerate(tqdm(rows, desc="localize", unit="pair"), start=1):
        name, fields, labels = _row_fields(row, path.parent, defaults, f"{i:04d}")
        name = f"{name}_{i:04d}" if name in names else name  # never overwrite a folder
        names.add(name)
        try:
            result = _localize(localizer, fields, labels)
            result.save(out / name, visualization=figures)
        except UsageError as exc:
            failed += 1
            tqdm.write(f"cvloc localize: row {i} ({path} line {line}): {exc}", file=sys.stderr)
            summary.append({"row": i, "name": name, "status": "error", "error": str(exc)})
            continue
        summary.append(_summary_row(i, name, out / name, result))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY)
        writer.writeheader()
        writer.writerows(summary)
    print(f"{len(rows) - failed} of {len(rows)} pairs localized; summary in {out / 'results.csv'}")
    return EXIT_ROWS_FAILED if failed else 0


def _row_fields(
    row: dict[str, str], base: Path, defaults: dict[str, Any], default_name: str
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(output folder name, fields, argument labels) of a CSV row over the defaults."""
    cells = {k: v.strip() for k, v in row.items() if k and v and v.strip()}
    for key in {"ground", "satellite", "intrinsics"} & set(cells):
        cells[key] = str(base / cells[key])  # an absolute path stays absolute
    name = Path(cells.pop("name", default_name)).name  # a folder name, never a path
    labels = {k: f"column {k}" for k in cells}
    for option, (a, b) in PAIRED.items():
        if a in cells or b in cells:
            labels[option] = f"columns {a}, {b}"
    for group in GROUPS:  # a row's camera or resolution replaces the command line's
        if set(group) & set(cells):
            defaults = {k: v for k, v in defaults.items() if k not in group}
    return name, {**defaults, **cells}, labels


def _summary_row(row: int, name: str, out_dir: Path, result: Any) -> dict[str, Any]:
    from cvloc.localize_result import ellipse_1sigma

    cov = result.covariance_m2
    values = [row, name, "ok", "", str(out_dir), *result.camera_uv, *result.camera_xy_m]
    values += [result.yaw_deg, *(result.latlon or ("", "")), result.confidence]
    values += [result.num_confident_matches, "" if cov is None else ellipse_1sigma(cov)[0]]
    return dict(zip(SUMMARY, values, strict=True))
