"""``build-map --executor ray --address`` pointed at a TCP port where something that is not Ray answers,
run in a private network namespace by test_ray_build.py: one clear line, a non-zero exit, nothing written,
within seconds. Prints a JSON report."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    bag, out = sys.argv[1], Path(sys.argv[2])
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:  # accepts, says something that is not gRPC, hangs up
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    from selavpr_ros.cli import main as cli

    err = io.StringIO()
    t = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = cli(["build-map", bag, "--image-topic", "/camera/image_raw", "--out", str(out), "--executor", "ray",
                    "--address", f"127.0.0.1:{server.getsockname()[1]}", "--quiet"])
    lines = [line for line in err.getvalue().splitlines() if line.startswith("selavpr-ros")]
    print(json.dumps({"code": code, "lines": lines, "seconds": time.monotonic() - t, "exists": out.exists()}))


if __name__ == "__main__":
    main()
