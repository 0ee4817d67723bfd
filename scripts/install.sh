#!/usr/bin/env bash
# Install selavpr_ros with every optional part into the current Python environment.
#
#   TORCH_SPEC   the PyTorch requirement installed first when torch is missing
#                (default torch==2.13.0; e.g. "torch --index-url https://download.pytorch.org/whl/cu124")
#   PYTHON       the interpreter (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null && [ -z "${CI:-}" ]; then
    echo "install.sh: warning: $("$PY" -c 'import sys; print(sys.executable)') is not a virtual environment;" \
         "pip will install into it directly (see README: a venv with --system-site-packages on ROS 2)" >&2
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
fi
"$PY" -m pip install --quiet -e ".[onnx,dds,eval,dev]"
