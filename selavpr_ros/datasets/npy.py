"""Reading ``.npy`` files from untrusted folders without running code.

``np.load(allow_pickle=True)`` unpickles object arrays, and a pickle can call
anything (``os.system`` included). Ragged ground-truth lists (GSV-Cities'
``*_gt.npy``) are object arrays of integer arrays, so they need unpickling;
here it goes through an unpickler that can only rebuild NumPy arrays and
dtypes, and refuses every other class by name.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from selavpr_ros.errors import DatasetError

# What pickled NumPy arrays reference, in NumPy 1.x and 2.x spellings.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays may be unpickled")


def load_npy(path: str | Path) -> np.ndarray:
    """An ``.npy`` array; object arrays only when they hold nothing but NumPy arrays and numbers."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise DatasetError(f"{path}: not a readable .npy file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc})") from None
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise DatasetError(f"{path}: .npy format version {version} is not supported")
            if not dtype.hasobject:
                raise DatasetError(f"{path}: unexpected pickled payload for dtype {dtype}")
            array = _ArrayUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, TypeError) as exc:
        raise DatasetError(f"{path}: refused: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path}: does not hold an array")
    return array
