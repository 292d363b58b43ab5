"""The reader study's web app: one static page, a JSON API and server-rendered PNGs.

The standard library's ``ThreadingHTTPServer`` serves it: five routes need no framework, it
starts in a thread for tests and stops with ``shutdown()``, and it adds nothing to the
dependencies. It has no authentication: bind it to 127.0.0.1 (the default) or a trusted network
(it warns on stderr and in the log when bound to anything else). :mod:`synthmri.reader.guard`
refuses requests for another Host (DNS rebinding), POSTs from another origin or not JSON,
bodies over 4 KiB whatever ``Content-Length`` says, and JSON nested more than 8 deep; a
connection idle for :data:`REQUEST_TIMEOUT` seconds is dropped.

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
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable

import numpy as np

from synthmri.data.store import IMAGE_CHANNELS
from synthmri.reader.guard import HostPolicy, check_depth, check_host, check_post, is_loopback
from synthmri.reader.study import ReaderStudy, StudyError

log = logging.getLogger(__name__)

PANEL_GAP = 4  # pixels between panels
GAP_VALUE = 48  # dark grey, so panel edges stay visible on black background
REQUEST_TIMEOUT = 15.0  # seconds a connection may sit idle (or stall mid-request) before it is dropped


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

    Args:
        study: the study to serve.
        host: the address to bind to (a name, an IPv4 or an IPv6 literal).
        port: the port (0: any free port).
        timeout: seconds before an idle connection is dropped (None: :data:`REQUEST_TIMEOUT`).

    Attributes:
        study: the study it serves.
        done: set when the study is complete.
        policy: the Host and Origin values it accepts.
        request_timeout: seconds before an idle connection is dropped.
    """

    daemon_threads = True

    def __init__(self, study: ReaderStudy, host: str = "127.0.0.1", port: int = 8000,
                 timeout: float | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.request_timeout = REQUEST_TIMEOUT if timeout is None else float(timeout)
        address, bound_port = self.server_address[:2]
        self.policy = HostPolicy(host, address, bound_port)
        if not is_loopback(address):
            message = (f"reader-study is listening on {address} port {bound_port}, not a loopback address: anyone who "
                       "can reach it can see the images and answer (there is no login); use --host 127.0.0.1 unless "
                       "this network is trusted")
            log.warning(message)
            print(f"WARNING: {message}", file=sys.stderr, flush=True)
        self.study = study
        self.done = threading.Event()
        self.page = page_html()
        self.thread: threading.Thread | None = None
        if study.complete:
            self.done.set()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

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
    timeout = REQUEST_TIMEOUT  # socket timeout; the server's request_timeout replaces it in setup()

    def setup(self) -> None:
        self.timeout = self.server.request_timeout
        super().setup()

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

    def _refuse(self, exc: StudyError) -> None:
        """Answer `exc` and close the connection (a body may be left unread)."""
        self.close_connection = True
        self._json(exc.status, {"error": str(exc)})

    def _read_json(self) -> dict[str, Any]:
        """The checked request's JSON object body (at most ``guard.MAX_BODY`` bytes are read)."""
        length = check_post(self.server.policy, self.headers)
        raw = self.rfile.read(length) if length else b""
        if len(raw) != length:
            raise StudyError("the body is shorter than its Content-Length")
        check_depth(raw)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError) as exc:
            raise StudyError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise StudyError("expected a JSON object")
        return body

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        study = self.server.study
        try:
            check_host(self.server.policy, self.headers)
        except StudyError as exc:
            self._refuse(exc)
            return
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
            check_host(self.server.policy, self.headers)
            body = self._read_json()
        except StudyError as exc:  # (a stalled body: http.server drops the connection on the socket timeout)
            self._refuse(exc)
            return
        if path == "/api/answer":
            self._call(lambda: study.answer(str(body.get("token", "")), str(body.get("answer", ""))))
        elif path == "/api/undo":
            self._call(study.undo)
        else:
            self._json(404, {"error": "not found"})


def serve(study: ReaderStudy, host: str = "127.0.0.1", port: int = 8000, timeout: float | None = None) -> ReaderServer:
    """Start serving `study` in a background thread (port 0: any free port); stop with ``.stop()``.

    `timeout`: seconds before an idle connection is dropped (None: :data:`REQUEST_TIMEOUT`).
    """
    server = ReaderServer(study, host, port, timeout)
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
