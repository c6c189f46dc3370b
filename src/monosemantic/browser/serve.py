"""``monosemantic serve``: run the browser app under uvicorn on a local port."""

from __future__ import annotations

import socket
from pathlib import Path

import uvicorn

from monosemantic.browser.app import create_app
from monosemantic.errors import UserError


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``run_dir``'s browser at http://host:port/ until interrupted."""
    app = create_app(run_dir)
    try:
        with socket.create_server((host, port)):
            pass  # uvicorn reports a taken port only in its log; check first to give one clear line
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    print(f"Feature browser for {Path(run_dir)}: http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
