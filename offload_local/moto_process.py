"""``python -m offload_local.moto_process FD``: moto's server (as ``python -m moto.server``
runs it) on a listening socket its parent bound and passed down as file descriptor ``FD``.

``moto.server`` takes a port number, and a port picked free by one process and bound later by
another can be taken in between by anything else that picks ports (parallel test runs): the
server then fails to start, or worse, the caller talks to someone else's moto. A socket the
parent binds to port 0 is the kernel's choice and already ours when the child starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offload_local.moto_process",
        description="moto's server on a listening socket inherited from the parent process "
        "(offload_local/servers.py starts it).",
    )
    parser.add_argument("fd", type=int, help="the listening socket's file descriptor")
    fd = parser.parse_args(argv).fd
    with socket.socket(fileno=os.dup(fd)) as probe:
        host, port = probe.getsockname()[:2]
    # What moto.server sets: some services build URLs back to the server from it.
    os.environ["MOTO_PORT"] = str(port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined]  # as moto.server: errors in the answer
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler, fd=fd)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
