"""Camera models by stamp, as ``camera_info`` arrives beside the images.

:class:`~selavpr_ros.types.CameraModel` (intrinsics, distortion, undistortion
of keypoints) is a value type every layer shares; it lives in
:mod:`selavpr_ros.types` and is re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from selavpr_ros.errors import CameraError
from selavpr_ros.transport.image_decoding import check_string_field
from selavpr_ros.types import DISTORTION_MODELS, EQUIDISTANT, PLUMB_BOB, RATIONAL_POLYNOMIAL, CameraModel

__all__ = ["DISTORTION_MODELS", "EQUIDISTANT", "PLUMB_BOB", "RATIONAL_POLYNOMIAL", "CameraModel", "CameraTrack"]


class CameraTrack:
    """Camera models by stamp, as ``camera_info`` messages arrive beside the images.

    An image takes the model stamped exactly like it, else the newest one
    within ``max_age_ns`` of it (calibrations rarely change; the two topics'
    messages may arrive in either order). Unusable CameraInfo (all-zero K,
    unknown distortion) is kept as its problem, so the image says why it has
    no model. At most ``capacity`` entries are kept (the newest).
    """

    def __init__(self, max_age_ns: int, capacity: int = 1000) -> None:
        import collections
        import threading

        self._lock = threading.Lock()  # transports add from their threads while the worker looks up
        self.max_age_ns = int(max_age_ns)
        self._entries: collections.OrderedDict[int, CameraModel | str] = collections.OrderedDict()
        self.capacity = capacity
        self.received = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, stamp_ns: int, msg: Any) -> None:
        """Record one ``sensor_msgs/CameraInfo``."""
        self.received += 1
        try:
            # strings from the wire end up in the map and in every candidate's reason: bounded first
            check_string_field("CameraInfo frame_id", getattr(getattr(msg, "header", None), "frame_id", ""))
            check_string_field("CameraInfo distortion_model", getattr(msg, "distortion_model", ""))
            entry: CameraModel | str = CameraModel.from_camera_info(msg)
        except CameraError as exc:
            entry = str(exc)
        except (AttributeError, TypeError, ValueError) as exc:
            entry = f"CameraInfo unreadable ({exc})"
        with self._lock:
            previous = next(reversed(self._entries.values()), None) if self._entries else None
            if isinstance(entry, CameraModel) and entry == previous:
                entry = previous  # one object per calibration
            self._entries[int(stamp_ns)] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def lookup(self, stamp_ns: int) -> tuple[CameraModel | None, str]:
        """``(model, "")``, or ``(None, why not)``."""
        with self._lock:
            if not self._entries:
                return None, "no CameraInfo received (camera_info topic)"
            entry = self._entries.get(int(stamp_ns))
            if entry is None:
                stamps = np.fromiter(self._entries, np.int64, len(self._entries))
                nearest = int(stamps[np.argmin(np.abs(stamps - stamp_ns))])
                if abs(nearest - stamp_ns) > self.max_age_ns:
                    return None, (f"no CameraInfo within {self.max_age_ns * 1e-9:.3f} s of the image "
                                  f"(nearest {abs(nearest - stamp_ns) * 1e-9:.3f} s away)")
                entry = self._entries[nearest]
        if isinstance(entry, str):
            return None, entry
        return entry, ""
