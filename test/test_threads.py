"""One CPU budget bounds every thread pool: PyTorch, faiss (OpenMP), BLAS, OpenCV, ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from selavpr_ros.threads import SMALL_MAP, search_threads, thread_budget


def _run(code: str) -> dict:
    """In a fresh process: the budget is process-wide, and libraries read some of it when they load."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_budget_reaches_loaded_and_later_libraries_and_the_node(tmp_path):
    got = _run(f"""
        import json, os, subprocess, sys
        import torch, faiss, cv2                      # loaded before the budget is set
        from selavpr_ros.cli import main
        from selavpr_ros.threads import thread_budget
        main(["--threads", "1", "map", "stats", "/nonexistent"])   # the CLI's --threads sets it
        from selavpr_ros.inference.onnx_backend import OnnxExtractor, export_onnx
        from selavpr_ros.models.zoo import builtin_checkpoint
        from selavpr_ros.models.checkpoint import read_checkpoint
        ck = read_checkpoint(builtin_checkpoint())
        export_onnx(ck.build(), {str(tmp_path / 'm.onnx')!r}, ck.model_id)
        options = OnnxExtractor({str(tmp_path / 'm.onnx')!r}, device="cpu").session.get_session_options()
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True).stdout.strip()
        print(json.dumps({{"budget": thread_budget(), "torch": torch.get_num_threads(),
                          "faiss": faiss.omp_get_max_threads(), "cv2": cv2.getNumThreads(),
                          "ort": [options.intra_op_num_threads, options.inter_op_num_threads],
                          "omp_env": os.environ["OMP_NUM_THREADS"], "child_torch": int(child)}}))
    """)
    assert got == {"budget": 1, "torch": 1, "faiss": 1, "cv2": 1, "ort": [1, 1], "omp_env": "1", "child_torch": 1}
    node = _run(f"""
        import json, torch
        from selavpr_ros.node.params import validate
        from selavpr_ros.node.pipeline import VPRPipeline
        p = VPRPipeline(validate({{"map_path": {str(tmp_path / 'map')!r}, "device": "cpu", "threads": 1}}))
        p.close()
        print(json.dumps({{"torch": torch.get_num_threads()}}))
    """)
    assert node == {"torch": 1}


def test_the_node_leaves_cores_to_others_by_default(tmp_path, monkeypatch):
    """threads: 0 is half the cores (at least one) for a live node (rclpy or `selavpr-ros node`), unless
    `selavpr-ros --threads` set a budget."""
    code = f"""
        import json, os, torch
        from selavpr_ros.cli import main
        from selavpr_ros.node.params import validate
        from selavpr_ros.node.pipeline import node_pipeline
        from selavpr_ros.threads import thread_budget
        if os.environ.get("CLI_THREADS"):
            main(["--threads", os.environ["CLI_THREADS"], "map", "stats", "/nonexistent"])
        p = node_pipeline(validate({{"map_path": {str(tmp_path / 'map')!r}, "device": "cpu"}}))
        p.close()
        print(json.dumps({{"torch": torch.get_num_threads(), "budget": thread_budget(), "cores": os.cpu_count()}}))
    """
    default = _run(code)
    assert default["torch"] == default["budget"] == max(1, default["cores"] // 2)
    monkeypatch.setenv("CLI_THREADS", "3")
    assert _run(code)["budget"] == 3


def test_small_maps_search_on_one_thread():
    assert search_threads(10) == search_threads(SMALL_MAP - 1) == 1
    assert search_threads(SMALL_MAP) == thread_budget() >= 1
