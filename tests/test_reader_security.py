"""The reader study stays blind and keeps its answers against a hostile reader, page or client.

Each test is one defect a hostile tester found: an order rebuilt from the default seed, a body
limit bypassed by ``Content-Length: -1``, idle connections held for ever, cross-origin POSTs
and foreign Hosts (DNS rebinding) served, nested JSON that crashed a request, and no warning
when bound beyond loopback.
"""

from __future__ import annotations

import json
import logging
import socket
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_reader_study import GENERATORS, stores  # noqa: F401 (the phantom stores fixture)

import synthmri.reader.server as reader_server
from synthmri.data.store import SliceStore
from synthmri.reader import finish, open_study, serve

CLIENT_TIMEOUT = 6.0  # seconds a test waits for an answer; the old server hung past it
OWN = object()  # the server's own Host header


def _request(server, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
             host=OWN) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request (any headers, any Content-Length) and read the reply until the server closes."""
    port = server.server_address[1]
    lines = [f"{method} {path} HTTP/1.1"]
    if host is OWN:
        host = f"127.0.0.1:{port}"
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, content = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers_in = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return int(status_line.split()[1]), headers_in, content


def _post(server, path: str, payload: dict, headers: dict[str, str] | None = None, host=OWN) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    status, _, content = _request(server, "POST", path, {"Content-Type": "application/json",
                                                          "Content-Length": str(len(body)), **(headers or {})},
                                  body, host=host)
    return status, content


@pytest.fixture
def served(stores, tmp_path):  # noqa: F811 (pytest passes the fixture)
    """A 4-image study with one answer given (so an undo that gets through shows), being served."""
    study = open_study(tmp_path / "study", real=stores["real"], synthetic=[stores["ddpm"]], per_source=2, seed=0)
    study.answer(study.state()["token"], "real")
    server = serve(study, port=0)
    try:
        yield study, server
    finally:
        server.stop()


def _old_order(n_test: int, store_sizes: list[int], per_source: int, seed: int = 0) -> list[str]:
    """The source of each image in presentation order, as the old plan drew it: one generator seeded
    with --seed drew the selection of each store (a permutation of its candidates) and then the order.
    Only the seed and the store sizes are needed: an attacker's reconstruction, without plan.json."""
    rng = np.random.default_rng(seed)
    for size in [n_test, *store_sizes]:
        rng.permutation(size)
    names = ["real", *GENERATORS]
    return [names[k // per_source] for k in rng.permutation(per_source * (1 + len(store_sizes)))]


# ---------------------------------------------------------------------------- 1. blindness


def test_the_order_is_secret_and_cannot_be_rebuilt_from_the_seed_and_store_sizes(stores, tmp_path, caplog,  # noqa: F811
                                                                                 capsys):
    caplog.set_level(logging.DEBUG)
    per_source = 8
    synthetic = [stores["ddpm"], stores["stylegan2"]]
    out = tmp_path / "study"
    study = open_study(out, real=stores["real"], synthetic=synthetic, per_source=per_source)  # default seed
    guess = _old_order(len(SliceStore(stores["real"]).indices("test")), [len(SliceStore(p)) for p in synthetic],
                       per_source)
    replies: list[bytes] = []
    server = serve(study, port=0)
    try:
        for path in ("/", "/api/next", "/plan.json", "/order.key", "/../order.key"):
            status, headers, body = _request(server, "GET", path)
            replies.append(json.dumps(headers).encode() + body)
        for predicted in guess:  # answer every image the way the attacker's reconstruction says
            status, headers, body = _request(server, "GET", "/api/next")
            token = json.loads(body)["token"]
            replies.append(json.dumps(headers).encode() + body)
            status, headers, body = _request(server, "GET", f"/image/{token}.png")
            replies.append(json.dumps(headers).encode() + body)
            status, body = _post(server, "/api/answer", {"token": token,
                                                         "answer": "real" if predicted == "real" else "synthetic"})
            assert status == 200
            replies.append(body)
    finally:
        server.stop()
    rows = finish(study).rows
    assert study.complete
    assert not all(row["accuracy"] == 1.0 for row in rows), f"answering by the rebuilt order scores {rows}"
    truth = [item["source"] for item in study.plan["items"]]
    assert truth != guess, "the presentation order is the one rebuilt from the default seed and the store sizes"

    # The secret: 256 bits in order.key, mode 0600, in no reply, log line, output or plan.json.
    key_path = out / "order.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = key_path.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    leaks = [key.encode(), str(int(key, 16)).encode()]
    assert not any(leak in reply for reply in replies for leak in leaks)
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text, (out / "plan.json").read_text()):
        assert key not in text and str(int(key, 16)) not in text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind

    # Resumed, the study keeps its key and its order; even re-planned (plan.json lost after the key
    # was written) the order comes back from the key. Another study of the same inputs gets its own key.
    assert open_study(out).plan == study.plan and key_path.read_text().strip() == key
    (out / "plan.json").unlink()
    (out / "answers.jsonl").unlink()
    replanned = open_study(out, real=stores["real"], synthetic=synthetic, per_source=per_source)
    assert [(i["source"], i["index"]) for i in replanned.plan["items"]] == \
        [(i["source"], i["index"]) for i in study.plan["items"]]
    open_study(tmp_path / "other", real=stores["real"], synthetic=synthetic, per_source=per_source)
    assert (tmp_path / "other" / "order.key").read_text().strip() != key


# ---------------------------------------------------------------------------- 2. body size


@pytest.mark.parametrize(("length", "status"), [("-1", 400), (None, 411), ("abc", 400), ("1e3", 400),
                                                ("4097", 413), (str(10**12), 413), ("2, 2", 400)])
def test_content_length_is_checked_before_anything_is_read(served, length, status):
    study, server = served
    headers = {"Content-Type": "application/json"}
    if length is not None:
        headers["Content-Length"] = length
    # No body and the connection left open: the old server read to the end of the stream (-1) or
    # took a missing length for an empty body, and undid the answer.
    started = time.monotonic()
    got, _, body = _request(server, "POST", "/api/undo", headers, b"")
    assert (got, study.answered) == (status, 1), body
    assert time.monotonic() - started < CLIENT_TIMEOUT


def test_a_chunked_body_is_refused(served):
    study, server = served
    got, _, _ = _request(server, "POST", "/api/undo", {"Content-Type": "application/json",
                                                       "Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n")
    assert (got, study.answered) == (411, 1)


# ---------------------------------------------------------------------------- 3. idle connections


def test_idle_connections_are_dropped(served, stores, tmp_path, monkeypatch):  # noqa: F811
    study, server = served
    default = getattr(server, "request_timeout", None) or getattr(server.RequestHandlerClass, "timeout", None)
    assert default is not None and 5 <= default <= 30, f"connections may idle for {default} s"

    monkeypatch.setattr(reader_server, "REQUEST_TIMEOUT", 0.5, raising=False)
    quick = serve(open_study(tmp_path / "study"), port=0)
    try:
        port = quick.server_address[1]
        for sent in (b"", b"POST /api/undo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port):  # silent; stalled headers
            with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(sent)
                started = time.monotonic()
                try:
                    assert sock.recv(1024) == b""  # closed by the server
                except TimeoutError:
                    pytest.fail(f"an idle connection ({sent!r}) is still open after {CLIENT_TIMEOUT} s")
                assert time.monotonic() - started < 3
        assert _request(quick, "GET", "/api/next")[0] == 200  # still serving
    finally:
        quick.stop()


# ---------------------------------------------------------------------------- 4. origin and host


def test_a_foreign_host_is_refused(served):
    study, server = served
    port = server.server_address[1]
    for host in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1:{port + 1}", f"10.0.0.1:{port}", "",
                 None, f"127.0.0.1:{port}@evil.example"):
        for method, path in (("GET", "/"), ("GET", "/api/next")):
            assert _request(server, method, path, host=host)[0] in (400, 421), (host, path)
        origin = {"Origin": f"http://{host}"} if host else {}
        assert _post(server, "/api/undo", {}, origin, host=host)[0] in (400, 421), host
    assert study.answered == 1
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert _request(server, "GET", "/api/next", host=host)[0] == 200, host


def test_posts_from_another_origin_or_not_json_are_refused(served):
    study, server = served
    port = server.server_address[1]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
                    {"Origin": f"https://127.0.0.1:{port}"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        assert _post(server, "/api/undo", {}, headers)[0] == 403, headers
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Length": "2", **({"Content-Type": content_type} if content_type else {})}
        assert _request(server, "POST", "/api/undo", headers, b"{}")[0] == 415, content_type
    assert study.answered == 1
    status, body = _post(server, "/api/undo", {}, {"Origin": f"http://127.0.0.1:{port}",
                                                   "Sec-Fetch-Site": "same-origin"})
    assert (status, study.answered) == (200, 0), body


class _AttackerPage(BaseHTTPRequestHandler):
    """Serves the attacker's page: it tries to undo the reader's answers on the reader server."""

    target = ""

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        page = ATTACK.replace("TARGET", self.target).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)


ATTACK = """<!doctype html><html><body>
<form id="form" method="POST" action="TARGET/api/undo" enctype="text/plain">
  <input name='{"x": "' value='"}'>
</form>
<script>
(async () => {
  const attempts = [
    {method: "POST", mode: "no-cors", body: "{}"},
    {method: "POST", mode: "no-cors", body: "{}", headers: {"Content-Type": "application/x-www-form-urlencoded"}},
    {method: "POST", mode: "no-cors"},
    {method: "POST", body: "{}", headers: {"Content-Type": "application/json"}},
  ];
  for (const init of attempts) {
    try { await fetch("TARGET/api/undo", init); } catch (error) {}
  }
  document.body.dataset.done = "1";
})();
</script></body></html>"""


def test_a_page_on_another_origin_cannot_undo_answers_in_chromium(served, browser):
    study, server = served
    study.answer(study.state()["token"], "synthetic")
    _AttackerPage.target = server.url.rstrip("/")
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        page = browser.new_page()
        page.goto(f"http://localhost:{attacker.server_address[1]}/")  # another origin, another site
        page.wait_for_selector("body[data-done='1']", timeout=15_000)
        assert study.answered == 2, "a fetch from another origin undid an answer"
        page.evaluate("document.getElementById('form').submit()")  # a plain form POST
        page.wait_for_load_state("load")
        page.wait_for_url(f"{server.url}api/undo", timeout=15_000)
        assert study.answered == 2, "a form on another origin undid an answer"
        page.close()
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert "undo" not in study.answers_path.read_text()


# ---------------------------------------------------------------------------- 5. nesting


@pytest.mark.parametrize("body", [b"[" * 4000, b'{"a":' * 800, b'{"token": ' + b"[" * 9 + b"]" * 9 + b"}"])
def test_deeply_nested_json_is_refused(served, body):
    study, server = served
    status, _, reply = _request(server, "POST", "/api/answer", {"Content-Type": "application/json",
                                                                "Content-Length": str(len(body))}, body)
    assert status == 400 and "deep" in json.loads(reply)["error"]
    assert _request(server, "GET", "/api/next")[0] == 200 and study.answered == 1


# ---------------------------------------------------------------------------- 6. binding


def test_binding_beyond_loopback_warns(served, caplog, capsys):
    study, _ = served
    caplog.set_level(logging.WARNING)
    capsys.readouterr()
    serve(study, port=0).stop()  # loopback: quiet
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and not capsys.readouterr().err
    server = serve(study, host="0.0.0.0", port=0)
    try:
        port = server.server_address[1]
        assert _request(server, "GET", "/api/next", host=f"127.0.0.1:{port}")[0] == 200
    finally:
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0.0.0.0" in message and "loopback" in message for message in warnings), warnings
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err


def test_resumed_study_reads_its_key_back(stores, tmp_path):  # noqa: F811
    out = tmp_path / "study"
    (out).mkdir()
    key = "ab" * 32
    (out / "order.key").write_text(key + "\n")
    (out / "order.key").chmod(0o644)
    first = open_study(out, real=stores["real"], synthetic=[stores["ddpm"]], per_source=3)
    assert stat.S_IMODE((out / "order.key").stat().st_mode) == 0o600 and (out / "order.key").read_text().strip() == key
    other = tmp_path / "other"
    other.mkdir()
    (other / "order.key").write_text(key + "\n")
    second = open_study(other, real=stores["real"], synthetic=[stores["ddpm"]], per_source=3)
    assert [(i["source"], i["index"]) for i in first.plan["items"]] == \
        [(i["source"], i["index"]) for i in second.plan["items"]]
    Path(other / "plan.json").unlink()
    (other / "order.key").write_text("not a key\n")
    with pytest.raises(ValueError, match="not a reader-study order key"):
        open_study(other, real=stores["real"], synthetic=[stores["ddpm"]], per_source=3)
