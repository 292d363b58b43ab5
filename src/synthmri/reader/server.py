"""The reader study's web app: one static page, a JSON API and server-rendered PNGs.

The standard library's ``ThreadingHTTPServer`` serves it: five routes need no framework, it
starts in a thread for tests and stops with ``shutdown()``, and it adds nothing to the
dependencies. It has no authentication: bind it to 127.0.0.1 (the default) or a trusted network.

Routes (the browser only ever sees opaque tokens)::

    GET  /                     the page (static; the same bytes for every study)
    GET  /api/next             {"token", "answered", "total", "done"}
    POST /api/answer           {"token", "answer": "real"|"synthetic"} -> the same shape as /api/next
    POST /api/undo             take back the last answer -> the same shape
    GET  /image/<token>.png    T1, T1Gd, T2, FLAIR side by side (no annotation channel)
"""

from __future__ import annotations

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable

import numpy as np

from synthmri.data.store import IMAGE_CHANNELS
from synthmri.reader.study import ReaderStudy, StudyError

log = logging.getLogger(__name__)

PANEL_GAP = 4  # pixels between panels
GAP_VALUE = 48  # dark grey, so panel edges stay visible on black background
MAX_BODY = 4096


def render_png(image: np.ndarray) -> bytes:
    """The four MR channels of uint8 [5, H, W] side by side as an 8-bit greyscale PNG.

    One path for every source: pixels as stored (the orientation of every other picture in the
    project), no scaling, no annotation, and a fixed encoder (IHDR, IDAT, IEND only; no text,
    time or gamma chunks), so the bytes depend on the pixels alone.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] < IMAGE_CHANNELS or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 [5, H, W], got {image.dtype} {list(image.shape)}")
    height, width = image.shape[1:]
    canvas = np.full((height, IMAGE_CHANNELS * width + (IMAGE_CHANNELS - 1) * PANEL_GAP), GAP_VALUE, dtype=np.uint8)
    for channel in range(IMAGE_CHANNELS):
        left = channel * (width + PANEL_GAP)
        canvas[:, left : left + width] = image[channel]
    buffer = io.BytesIO()
    Image.fromarray(canvas, "L").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def page_html() -> bytes:
    """The single page (``static/index.html``)."""
    return resources.files("synthmri.reader").joinpath("static/index.html").read_bytes()


class ReaderServer(ThreadingHTTPServer):
    """An HTTP server for one study; `done` is set once every item is answered.

    Attributes:
        study: the study it serves.
        done: set when the study is complete.
    """

    daemon_threads = True

    def __init__(self, study: ReaderStudy, host: str = "127.0.0.1", port: int = 8000) -> None:
        super().__init__((host, port), _Handler)
        self.study = study
        self.done = threading.Event()
        self.page = page_html()
        self.thread: threading.Thread | None = None
        if study.complete:
            self.done.set()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        """Stop serving (if started in a thread) and close the socket."""
        if self.thread is not None:
            self.shutdown()
            self.thread.join()
            self.thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ReaderServer
    server_version = "synthmri-reader"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _call(self, action: Callable[[], dict[str, Any]]) -> None:
        try:
            state = action()
        except StudyError as exc:
            self._json(exc.status, {"error": str(exc), **self.server.study.state()})
            return
        self._json(200, state)
        if state["done"]:
            self.server.done.set()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        study = self.server.study
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/next":
            self._call(study.state)
        elif path.startswith("/image/") and path.endswith(".png"):
            try:
                png = render_png(study.pixels(path[len("/image/") : -len(".png")]))
            except StudyError as exc:
                self._json(exc.status, {"error": str(exc)})
                return
            self._send(200, png, "image/png")
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        study = self.server.study
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise StudyError("request body too large", status=413)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise StudyError("expected a JSON object")
        except (ValueError, StudyError) as exc:
            self._json(getattr(exc, "status", 400), {"error": str(exc)})
            return
        if path == "/api/answer":
            self._call(lambda: study.answer(str(body.get("token", "")), str(body.get("answer", ""))))
        elif path == "/api/undo":
            self._call(study.undo)
        else:
            self._json(404, {"error": "not found"})


def serve(study: ReaderStudy, host: str = "127.0.0.1", port: int = 8000) -> ReaderServer:
    """Start serving `study` in a background thread (port 0: any free port); stop with ``.stop()``."""
    server = ReaderServer(study, host, port)
    server.thread = threading.Thread(target=server.serve_forever, name="reader-study", daemon=True)
    server.thread.start()
    return server


def run_until_done(study: ReaderStudy, host: str, port: int, announce: Callable[[str], None] = print) -> None:
    """Serve `study` in the foreground until every item is answered (Ctrl-C: KeyboardInterrupt, answers kept)."""
    server = serve(study, host, port)
    try:
        announce(f"reader-study: open {server.url} ({study.answered} of {study.total} answered; "
                 "keys R real, S synthetic, U undo; Ctrl-C pauses, re-run to resume)")
        while not server.done.wait(0.5):
            pass
    except KeyboardInterrupt:
        announce(f"reader-study: paused at {study.answered} of {study.total}; answers kept in {study.answers_path}")
        raise
    finally:
        server.stop()
