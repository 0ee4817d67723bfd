"""One CPU budget for every thread pool of the process.

A robot's computer also runs SLAM, drivers and planners. PyTorch, OpenMP
(faiss), the BLAS behind NumPy, ONNX Runtime and OpenCV each start a pool of
one thread per core by default; side by side, and next to other loads, they
oversubscribe the cores and spin while they wait, which multiplies latency
(``benchmarks/cpu_share.py`` measures it). :func:`set_thread_budget` bounds
all of them at once: the libraries already loaded through their own calls,
those loaded later (and child processes) through the environment variables
they read when they start. ONNX Runtime sessions read :func:`thread_budget`
when they are created.

Binary search over a small map uses one thread whatever the budget: scanning
``SMALL_MAP`` codes of 64 bytes takes about a millisecond, less than waking a
pool costs.
"""

from __future__ import annotations

import os
import sys

SMALL_MAP = 200_000  # binary codes below which a search runs on one thread
_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")
_budget: int | None = None


def thread_budget() -> int:
    """Threads a pool may use: the budget set, else every core."""
    return _budget or os.cpu_count() or 1


def set_thread_budget(threads: int | None = None) -> int:
    """Bound every thread pool of this process (and of the processes it starts) to ``threads``
    (None or 0: every core); returns the budget."""
    global _budget
    n = max(1, int(threads or os.cpu_count() or 1))
    _budget = n
    for name in _ENV:
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)
    return n


def node_threads(requested: int = 0) -> int:
    """The node's budget: ``requested``; with 0 the budget the process already has (``selavpr-ros
    --threads``), else half the cores (at least one), leaving the rest to SLAM, drivers and planners.
    Next to a load on every core, pools as wide as the machine slow the node's frame far more than
    half of them do (``benchmarks/cpu_share.py``)."""
    if requested > 0:
        return requested
    return _budget or max(1, (os.cpu_count() or 1) // 2)


def search_threads(entries: int) -> int:
    """Threads for one binary search over ``entries`` codes."""
    return 1 if entries < SMALL_MAP else thread_budget()
