"""A local Prefect server whose UI works, plus a loopback file server that makes the runs' pictures visible in it.

    make server                                  # = python -m deployments.server (Ctrl-C stops both)
    python -m deployments.server --port 4321     # the UI at http://127.0.0.1:4321, files at :4322

Prefect's UI reads its API address from `PREFECT_UI_API_URL`, which `prefect server start --port` does not
set: without it the UI is blank. Image artifacts need an http(s) URL (the UI's markdown sanitizer strips
`data:` images and a browser cannot load a local path), so `$REASONLAB_HOME/runs` is served read-only on
loopback and `$REASONLAB_HOME/server.json` tells every run of this home where (`tasks/artifacts.py`).
A team whose runs live in shared storage sets `REASONLAB_FILES_URL` to that storage's http(s) root instead.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from reasonlab import paths
from reasonlab.io import write_json

from tasks.artifacts import SERVER_FILE  # {"api_url", "ui_url", "files_url"} of the server started from this home


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


def start_file_server(root: Path, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    """Serve `root` read-only (GET/HEAD) on host:port in a daemon thread; port 0 picks a free one."""
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="reasonlab-files", daemon=True).start()
    return server


def server_env(host: str, port: int) -> dict[str, str]:
    """The environment `prefect server start` needs for a UI that talks to the right API, with analytics off."""
    api = f"http://{host}:{port}/api"
    return {**os.environ, "PREFECT_UI_API_URL": api, "PREFECT_API_URL": api,
            "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.server", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address both servers listen on")
    parser.add_argument("--port", type=int, default=4200, help="Prefect API + UI port")
    parser.add_argument("--files-port", type=int, default=None, help="file server port (default: --port + 1)")
    args = parser.parse_args(argv)

    files = start_file_server(paths.runs_dir(), args.host, args.files_port or args.port + 1)
    info = {"api_url": f"http://{args.host}:{args.port}/api", "ui_url": f"http://{args.host}:{args.port}",
            "files_url": f"http://{args.host}:{files.server_address[1]}"}
    record = paths.home() / SERVER_FILE
    write_json(record, info)
    print(f"Prefect UI:   {info['ui_url']}\n"
          f"run files:    {info['files_url']}  (serving {paths.runs_dir()})\n"
          f"Point runs at it (any shell, same REASONLAB_HOME):  export PREFECT_API_URL={info['api_url']}",
          flush=True)
    prefect = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", args.host,
                                "--port", str(args.port)], env=server_env(args.host, args.port))
    signal.signal(signal.SIGTERM, lambda *_: prefect.terminate())
    try:
        code = prefect.wait()
    except KeyboardInterrupt:
        prefect.terminate()
        code = prefect.wait()
    finally:
        files.shutdown()
        record.unlink(missing_ok=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
