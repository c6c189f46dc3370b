"""``monosemantic serve``: run the browser app under uvicorn on a local port."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import uvicorn

from monosemantic.browser.app import create_app
from monosemantic.browser.guards import LOOPBACK_HOSTS
from monosemantic.errors import UserError


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``run_dir``'s browser at http://host:port/ until interrupted. Bound to a loopback
    address it answers only to loopback host names (no DNS rebinding); bound elsewhere, to any."""
    app = create_app(run_dir, LOOPBACK_HOSTS if _is_loopback(host) else None)
    try:
        with socket.create_server((host, port)):
            pass  # uvicorn reports a taken port only in its log; check first to give one clear line
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    print(f"Feature browser for {Path(run_dir)}: http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
