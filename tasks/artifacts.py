"""Pictures and run folders as Prefect artifacts that the UI can show.

A browser loads images only from http(s) URLs, so a file under `$REASONLAB_HOME/runs` is published as
`<files_url>/<path relative to runs>`. `files_url` is `REASONLAB_FILES_URL` (a team's shared storage
served over http(s)), else the loopback file server that `python -m deployments.server` started for this
home (recorded in `$REASONLAB_HOME/server.json`). With neither, the artifacts name the local path and say
how to make the picture visible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from prefect.artifacts import create_image_artifact, create_link_artifact

from reasonlab import paths

SERVER_FILE = "server.json"  # written by deployments/server.py


def files_url() -> str | None:
    """The http(s) root that serves `$REASONLAB_HOME/runs`, or None."""
    url = os.environ.get("REASONLAB_FILES_URL")
    if not url:
        try:
            url = json.loads((paths.home() / SERVER_FILE).read_text()).get("files_url")
        except (OSError, ValueError):
            return None
    return url.rstrip("/") if url else None


def url_for(path: Path | str) -> str | None:
    """The URL of a file or folder under `$REASONLAB_HOME/runs`, or None (no file server, or outside runs/)."""
    root = files_url()
    try:
        relative = Path(path).resolve().relative_to(paths.runs_dir().resolve())
    except ValueError:
        return None
    if root is None:
        return None
    suffix = "/" if Path(path).is_dir() else ""
    return f"{root}/{quote(relative.as_posix())}{suffix}"


def image_markdown(path: Path | str, alt: str) -> str:
    """Markdown that shows the picture in the UI when it has a URL, else names the file and the fix."""
    url = url_for(path)
    if url:
        return f"![{alt}]({url})"
    return f"`{path}` (start `python -m deployments.server`, or set `REASONLAB_FILES_URL`, to see it here)"


def publish_image(path: Path | str, key: str, description: str) -> str | None:
    """An image artifact for a PNG under runs/ (when it has a URL); returns the URL."""
    url = url_for(path)
    if url:
        create_image_artifact(image_url=url, key=key, description=description)
    return url


def publish_run_folder(folder: Path | str, key: str, description: str) -> str:
    """A link artifact to a run folder: its http(s) URL when served, else a file:// link (Prefect's advice
    for private files)."""
    link = url_for(folder) or Path(folder).resolve().as_uri()
    create_link_artifact(link=link, link_text=str(folder), key=key, description=description)
    return link
