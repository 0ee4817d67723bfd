"""``selavpr-ros sim``: record simulated robot sessions with exact geometry as rosbag2 files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Drive a simulated robot around a city block whose walls are real photographs
(an exact ray caster: image, registered depth and pose agree to the pixel) and
record what its drivers would publish: /camera/image_raw, /camera/camera_info,
/camera/depth (32FC1), /odom (drifting, with covariance), /tf, /tf_static and
the ground truth (/ground_truth and a TUM file beside each bag).

Session A drives --laps laps; from its second lap on the robot keeps another
lane (--shift metres) and its heading wobbles (--wobble degrees): revisits
from another viewpoint. Session B drives one lap in the other lane under
other light (a later visit). Re-running replaces the output folder.
"""


def cmd_sim(args: argparse.Namespace) -> int:
    import shutil

    import numpy as np

    from selavpr_ros.errors import ConfigError
    from selavpr_ros.sim.route import OdometryNoise, loop_route
    from selavpr_ros.sim.session import write_session
    from selavpr_ros.sim.world import block_world
    from selavpr_ros.types import CameraModel

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size takes WIDTHxHEIGHT, e.g. 320x240, got {args.size!r}") from None
    out = Path(args.out)
    if out.exists():
        if not (out / ".selavpr_sim").is_file():
            raise ConfigError(f"{out} exists and is not a sim output folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ".selavpr_sim").touch()
    world = block_world(seed=args.seed)
    camera = CameraModel.nominal(width, height, args.hfov, frame_id="camera_optical")
    noise = OdometryNoise(translation_fraction=args.odom_noise)
    first = loop_route(40.0, 30.0, laps=1.0, step=args.step)
    later = loop_route(40.0, 30.0, laps=max(args.laps - 1.0, 0.0), step=args.step, lateral_shift=args.shift,
                       heading_wobble_deg=args.wobble, seed=args.seed)
    route_a = np.concatenate([first, later]) if len(later) else first
    route_a[:, 2] = np.unwrap(route_a[:, 2])
    t0 = 1_700_000_000 * 10**9
    a = write_session(out / "session_a", world, route_a, camera, t0, noise=noise, seed=args.seed,
                      progress=not args.quiet)
    route_b = loop_route(40.0, 30.0, laps=1.0, step=args.step, lateral_shift=args.shift, seed=args.seed + 1)
    b = write_session(out / "session_b", world.with_appearance((1.1, 0.95, 0.8), 1.25), route_b, camera,
                      t0 + 86_400 * 10**9, noise=noise, seed=args.seed + 1, progress=not args.quiet)
    print(json.dumps({"session_a": {"bag": str(a.bag), "ground_truth": str(a.tum), "frames": len(route_a)},
                      "session_b": {"bag": str(b.bag), "ground_truth": str(b.tum), "frames": len(route_b)},
                      "odometry_end_error_m": {
                          "a": float(np.linalg.norm(a.odometry[-1, :2] - a.truth[-1, :2])),
                          "b": float(np.linalg.norm(b.odometry[-1, :2] - b.truth[-1, :2]))}}, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser("sim", help="record simulated robot sessions (images, depth, drifting odometry, ground truth)",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--out", default="selavpr_sim", help="output folder (replaced on each run)")
    p.add_argument("--laps", type=float, default=2.0, help="laps of session A")
    p.add_argument("--step", type=float, default=1.0, help="metres between frames")
    p.add_argument("--shift", type=float, default=0.8, help="lane change (m) of the revisits")
    p.add_argument("--wobble", type=float, default=6.0, help="heading wobble (deg) of the revisits")
    p.add_argument("--size", default="320x240", help="image WIDTHxHEIGHT")
    p.add_argument("--hfov", type=float, default=90.0, help="horizontal field of view (deg)")
    p.add_argument("--odom-noise", type=float, default=0.02, help="odometry translation noise per metre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sim)
