"""``synthmri reader-study``: plan, answers, blinding, bad input, and the whole study in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthmri.cli import main
from synthmri.data.store import SliceRow, SliceStore, StoreWriter
from synthmri.reader import (
    ForegroundRule,
    StudyError,
    build_plan,
    confusion_rows,
    finish,
    open_study,
    render_png,
    serve,
)
from synthmri.reader.server import page_html

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
VIEWPORT = {"width": 1000, "height": 560}
GENERATORS = ("ddpm", "stylegan2")


def _write_store(out: Path, slices: np.ndarray, *, generator: str | None, split: str = "train") -> Path:
    rows = [SliceRow(f"{generator or 'real'}-{i:04d}", generator or f"subject-{i // 8}", -1 if generator else i, split)
            for i in range(len(slices))]
    with StoreWriter(out, image_size=slices.shape[-1], source={"path": "test", "content_hash": "0" * 64},
                     shard_size=64, generator={"name": generator, "version": 1} if generator else None) as writer:
        writer.add(slices, rows)
    return out


@pytest.fixture(scope="module")
def stores(phantom_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real phantom store and two 'synthetic' ones: perturbed real training slices, plus two
    empty slices in the ddpm store that the foreground rule must never pick. No training."""
    root = tmp_path_factory.mktemp("reader-stores")
    real = SliceStore(phantom_store)
    train = real.read(real.indices("train"))
    rng = np.random.default_rng(0)
    noisy = np.clip(train.astype(np.int16) + rng.normal(0, 6, train.shape).round().astype(np.int16), 0, 255)
    ddpm = np.concatenate([noisy.astype(np.uint8), np.zeros((2, *train.shape[1:]), np.uint8)])
    flipped = np.ascontiguousarray(train[:, :, :, ::-1])
    return {"real": Path(phantom_store),
            "ddpm": _write_store(root / "synthetic-ddpm", ddpm, generator="ddpm"),
            "stylegan2": _write_store(root / "synthetic-sg2", flipped, generator="stylegan2")}


def _items(plan: dict) -> list[tuple[str, int]]:
    return [(item["source"], item["index"]) for item in plan["items"]]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def _png_size(data: bytes) -> tuple[int, int]:
    kind, body = _png_chunks(data)[0]
    assert kind == b"IHDR"
    return struct.unpack(">II", body[:8])


def _http(url: str, body: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


# ---------------------------------------------------------------------------- plan


def test_plan_is_balanced_deterministic_and_stable_across_restarts(stores, tmp_path):
    synthetic = [stores["ddpm"], stores["stylegan2"]]
    first = build_plan(stores["real"], synthetic, 4, seed=3, order_key=2**200 + 7)
    again = build_plan(stores["real"], synthetic, 4, seed=3, order_key=2**200 + 7)
    other = build_plan(stores["real"], synthetic, 4, seed=4, order_key=2**200 + 7)
    reordered = build_plan(stores["real"], synthetic, 4, seed=3, order_key=2**200 + 8)
    unkept = build_plan(stores["real"], synthetic, 4, seed=3)  # a fresh secret order

    assert Counter(source for source, _ in _items(first)) == {"real": 4, "ddpm": 4, "stylegan2": 4}
    assert _items(first) == _items(again) and _items(first) != _items(other)
    # The seed picks the slices, the order key (never in the plan) the order they are shown in.
    assert sorted(_items(first)) == sorted(_items(reordered)) == sorted(_items(unkept))
    assert _items(first) != _items(reordered)
    assert str(2**200 + 7) not in json.dumps(first) and f"{2**200 + 7:x}" not in json.dumps(first)
    tokens = [item["token"] for item in first["items"]]
    assert len(set(tokens)) == 12 and set(tokens).isdisjoint(item["token"] for item in again["items"])
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)  # opaque: random hex, nothing else
    assert [s["name"] for s in first["sources"]] == ["real", "ddpm", "stylegan2"]
    assert Counter(source for source, _ in _items(first)[:6]) != {"real": 6}  # shuffled, not grouped

    real = SliceStore(stores["real"])
    rule = ForegroundRule.for_store(real)
    assert rule == ForegroundRule("t1", 50, 0.15)  # what prepare recorded in the manifest
    for source, index in _items(first):
        store = real if source == "real" else SliceStore(stores[source])
        assert source != "real" or real.split[index] == "test"  # held-out patients only
        assert rule.passes(store.read([index]))[0]
    ddpm = SliceStore(stores["ddpm"])
    assert not rule.passes(ddpm.read([len(ddpm) - 2, len(ddpm) - 1])).any()  # empty slices are never shown

    study = open_study(tmp_path, real=stores["real"], synthetic=synthetic, per_source=4, seed=3, reader="ab")
    written = (tmp_path / "plan.json").read_bytes()
    assert sorted(_items(study.plan)) == sorted(_items(first))
    resumed = open_study(tmp_path, real=stores["real"], synthetic=synthetic, per_source=4, seed=3, reader="ab")
    assert resumed.plan == study.plan and (tmp_path / "plan.json").read_bytes() == written
    assert open_study(tmp_path).plan == study.plan  # the plan alone suffices to resume
    with pytest.raises(StudyError, match=r"--per-source 5 \(plan: 4\)"):
        open_study(tmp_path, real=stores["real"], synthetic=synthetic, per_source=5, seed=3)
    with pytest.raises(StudyError, match="other inputs: stores"):
        open_study(tmp_path, real=stores["real"], synthetic=synthetic[:1], per_source=4, seed=3)
    with pytest.raises(StudyError, match="belongs to reader 'ab'"):
        open_study(tmp_path, reader="cd")


def test_bad_input_names_the_store_and_the_numbers(stores, tmp_path, capsys):
    real = SliceStore(stores["real"])
    n_test = len(real.indices("test"))
    with pytest.raises(StudyError, match=rf"{stores['real']}: --per-source {n_test + 1} but the store has only "
                                         rf"{n_test} test slices"):
        build_plan(stores["real"], [stores["ddpm"]], n_test + 1, seed=0)

    mostly_empty = _write_store(tmp_path / "empty-gen", np.concatenate(
        [real.read(real.indices("train")[:2]), np.zeros((6, 5, 32, 32), np.uint8)]), generator="empty")
    with pytest.raises(StudyError, match=rf"{mostly_empty}: --per-source 3 but only 2 of its 8 slices pass the "
                                         "foreground rule"):
        build_plan(stores["real"], [mostly_empty], 3, seed=0)

    no_test = _write_store(tmp_path / "no-test", real.read(real.indices("train")[:4]), generator=None)
    with pytest.raises(StudyError, match=rf"{no_test}: no test slices"):
        build_plan(no_test, [stores["ddpm"]], 1, seed=0)

    small = _write_store(tmp_path / "small", np.zeros((2, 5, 16, 16), np.uint8), generator="small")
    with pytest.raises(StudyError, match=rf"{small}: image size 16, but the real store {stores['real']} has 32"):
        build_plan(stores["real"], [small], 1, seed=0)

    with pytest.raises(StudyError, match="'ddpm' is already taken"):
        build_plan(stores["real"], [stores["ddpm"], stores["ddpm"]], 1, seed=0)
    with pytest.raises(StudyError, match="needs --real, --synthetic and --per-source"):
        open_study(tmp_path / "new", real=stores["real"])

    assert main(["reader-study", "--profile", str(DEMO), "--real", str(stores["real"]), "--synthetic", str(small),
                 "--per-source", "1", "--out", str(tmp_path / "cli")]) == 1
    assert "image size 16" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "plan.json").exists()


# ---------------------------------------------------------------------------- answers


def test_answers_refuse_reanswers_undo_survive_a_torn_line_and_finish_early(stores, tmp_path, mlflow_uri, capsys):
    study = open_study(tmp_path, real=stores["real"], synthetic=[stores["ddpm"]], per_source=2, seed=1)
    tokens = [item["token"] for item in study.plan["items"]]
    assert study.state() == {"token": tokens[0], "answered": 0, "total": 4, "done": False}
    assert study.answer(tokens[0], "real")["token"] == tokens[1]
    for token, answer, status in ((tokens[0], "synthetic", 409), ("nope", "real", 404), (tokens[1], "maybe", 400)):
        with pytest.raises(StudyError) as caught:
            study.answer(token, answer)
        assert caught.value.status == status
    study.answer(tokens[1], "synthetic")
    assert study.undo()["token"] == tokens[1] and study.answered == 1
    study.answer(tokens[1], "real")
    with open(study.answers_path, "ab") as handle:  # a crash mid-write
        handle.write(b'{"token": "' + tokens[2].encode())

    resumed = open_study(tmp_path)
    assert resumed.answers() == {tokens[0]: "real", tokens[1]: "real"}
    assert resumed.state()["token"] == tokens[2]
    resumed.answer(tokens[2], "synthetic")
    lines = [json.loads(line) for line in resumed.answers_path.read_text().splitlines()]
    assert [r.get("answer", "undo") for r in lines] == ["real", "synthetic", "undo", "real", "synthetic"]

    # Stopped early: --finish writes the table of what was answered, and logs it.
    assert main(["reader-study", "--profile", str(DEMO), "--out", str(tmp_path), "--finish"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("reader-study: 3/4 answered; accuracy") and "MLflow run" in summary
    truth = {item["token"]: item["source"] for item in resumed.plan["items"]}
    expected = {"real": Counter(), "ddpm": Counter()}
    for token, answer in resumed.answers().items():
        expected[truth[token]][answer] += 1
    with open(tmp_path / "confusion.csv", newline="") as handle:
        table = {row["source"]: row for row in csv.DictReader(handle)}
    for source, counts in expected.items():
        assert int(table[source]["n"]) == 2
        assert int(table[source]["answered"]) == sum(counts.values())
        assert int(table[source]["answered_real"]) == counts["real"]
        assert int(table[source]["answered_synthetic"]) == counts["synthetic"]


# ---------------------------------------------------------------------------- blinding


def test_the_browser_sees_tokens_and_pixels_only(stores, tmp_path):
    study = open_study(tmp_path / "a", real=stores["real"], synthetic=[stores["ddpm"], stores["stylegan2"]],
                       per_source=3, seed=5)
    other = open_study(tmp_path / "b", real=stores["real"], synthetic=[stores["stylegan2"]], per_source=1, seed=9)
    forbidden = [*GENERATORS, "real", "synthetic", str(stores["real"]), str(tmp_path), "plan", "index", "source"]
    server = serve(study, port=0)
    try:
        status, _, html = _http(server.url)
        assert status == 200 and html == page_html()  # static: identical for every study
        for word in (*GENERATORS, str(stores["real"]), str(tmp_path)):
            assert word.encode() not in html
        other_server = serve(other, port=0)
        try:
            assert _http(other_server.url)[2] == html
        finally:
            other_server.stop()

        status, _, body = _http(server.url + "api/next")
        state = json.loads(body)
        assert status == 200 and set(state) == {"token", "answered", "total", "done"}
        assert not any(word.lower() in body.decode().lower() for word in forbidden)
        status, _, body = _http(server.url + "api/answer", {"token": state["token"], "answer": "synthetic"})
        assert status == 200 and not any(word.lower() in body.decode().lower() for word in forbidden)

        header_sets, sizes = set(), set()
        for item in study.plan["items"]:
            status, headers, png = _http(f"{server.url}image/{item['token']}.png")
            assert status == 200 and headers["Content-Type"] == "image/png"
            header_sets.add(tuple(sorted(k for k in headers)))
            assert [kind for kind, _ in _png_chunks(png)] == [b"IHDR", b"IDAT", b"IEND"]  # no metadata chunks
            sizes.add(_png_chunks(png)[0][1])  # width, height, bit depth, colour type, ...
            store = SliceStore(stores["real"] if item["source"] == "real" else stores[item["source"]])
            assert png == render_png(store.read([item["index"]])[0])  # bytes are a function of the pixels
        assert len(header_sets) == 1 and len(sizes) == 1
        assert _png_size(png) == (4 * 32 + 3 * 4, 32)
        assert _http(server.url + "image/" + "0" * 32 + ".png")[0] == 404
        assert _http(server.url + "plan.json")[0] == 404
    finally:
        server.stop()


# ---------------------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _current_token(page) -> str:
    return page.get_attribute("#slice", "src").removeprefix("/image/").removesuffix(".png")


def _wait_ready(page, progress: str) -> None:
    page.wait_for_function("([p]) => document.getElementById('progress').textContent === p && "
                           "['ready', 'done'].includes(document.body.dataset.state)", arg=[progress], timeout=10_000)


def _answer(page, given: dict[str, str], answer: str, how: str, total: int) -> None:
    token = _current_token(page)
    if how == "key":
        page.keyboard.press(answer[0].upper())
    else:
        page.click(f"#answer-{answer}")
    given[token] = answer
    _wait_ready(page, f"{len(given)} / {total}")


def _screenshot(page, path: Path) -> Path:
    page.screenshot(path=str(path))
    assert _png_size(path.read_bytes()) == (VIEWPORT["width"], VIEWPORT["height"])
    return path


def test_reader_study_end_to_end_in_chromium(stores, tmp_path, mlflow_uri, browser, capsys):
    out = tmp_path / "study"
    args = ["--real", str(stores["real"]), "--synthetic", str(stores["ddpm"]), "--synthetic", str(stores["stylegan2"]),
            "--per-source", "3", "--seed", "11", "--out", str(out)]
    study = open_study(out, real=stores["real"], synthetic=[stores["ddpm"], stores["stylegan2"]], per_source=3, seed=11)
    truth = {item["token"]: item["source"] for item in study.plan["items"]}
    order = [item["token"] for item in study.plan["items"]]
    total = len(order)
    seen: list[bytes] = []
    responses: list = []

    def record(response) -> None:
        if "/image/" not in response.url:
            responses.append(response)

    def keep_bodies() -> None:  # read before the page closes
        seen.extend(r.body() for r in responses)
        responses.clear()

    given: dict[str, str] = {}
    server = serve(study, port=0)
    try:
        page = browser.new_page(viewport=VIEWPORT)
        page.on("response", record)
        page.goto(server.url)
        _wait_ready(page, f"0 / {total}")
        assert _current_token(page) == order[0]
        shots = [_screenshot(page, tmp_path / "1-start.png")]
        _answer(page, given, "real", "button", total)
        _answer(page, given, "synthetic", "button", total)
        _answer(page, given, "synthetic", "key", total)
        page.keyboard.press("U")  # undo the last answer: back to the third item
        given.pop(order[2])
        _wait_ready(page, f"2 / {total}")
        assert _current_token(page) == order[2]
        _answer(page, given, "real", "key", total)
        _answer(page, given, "synthetic", "key", total)
        shots.append(_screenshot(page, tmp_path / "2-mid.png"))
        keep_bodies()
        page.close()  # the tab is closed mid-study ...
    finally:
        server.stop()  # ... and the server restarted, now through the CLI

    port = _free_port()
    result: dict[str, int] = {}
    cli = threading.Thread(target=lambda: result.update(rc=main(["reader-study", "--profile", str(DEMO), *args,
                                                                 "--port", str(port)])), daemon=True)
    cli.start()
    deadline = time.monotonic() + 20
    while _http_ok(f"http://127.0.0.1:{port}/api/next") is False:
        assert cli.is_alive() and time.monotonic() < deadline, "the CLI did not start serving"
        time.sleep(0.1)
    page = browser.new_page(viewport=VIEWPORT)
    page.on("response", record)
    page.goto(f"http://127.0.0.1:{port}/")
    _wait_ready(page, f"4 / {total}")  # resumes at the first unanswered item
    assert _current_token(page) == order[4]
    shots.append(_screenshot(page, tmp_path / "3-resumed.png"))
    for k in range(4, total):
        _answer(page, given, ("real", "synthetic")[k % 2], ("key", "button")[k % 3 == 0], total)
    page.wait_for_selector("#done", state="visible")
    assert page.text_content("#progress") == f"{total} / {total}"
    shots.append(_screenshot(page, tmp_path / "4-done.png"))
    if os.environ.get("SYNTHMRI_SAVE_SCREENSHOTS"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shots[2], REPO / "docs" / "reader-study.png")
    keep_bodies()
    page.close()
    cli.join(timeout=60)
    assert result.get("rc") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"reader-study: {total}/{total} answered; accuracy ")

    # The table equals an independent count from the plan (the truth) and the answers given.
    assert {k: v for k, v in json.loads((out / "plan.json").read_text()).items() if k != "created"} == \
        {k: v for k, v in study.plan.items() if k != "created"}
    with open(out / "confusion.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["source"] for row in table] == ["real", *GENERATORS]
    metrics = {}
    for row in table:
        answers = [given[t] for t, source in truth.items() if source == row["source"]]
        right = answers.count("real" if row["source"] == "real" else "synthetic")
        assert (int(row["n"]), int(row["answered"])) == (3, 3)
        assert (int(row["answered_real"]), int(row["answered_synthetic"])) == \
            (answers.count("real"), answers.count("synthetic"))
        assert float(row["accuracy"]) == pytest.approx(right / 3)
        metrics.update({f"reader.{row['source']}.answered_real": answers.count("real"),
                        f"reader.{row['source']}.answered_synthetic": answers.count("synthetic"),
                        f"reader.{row['source']}.accuracy": right / 3})
    assert confusion_rows(study.plan, given) == confusion_rows(study.plan, open_study(out).answers())

    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("synthmri-evaluation")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`synthmri.stage` = 'reader-study'")
    for key, value in metrics.items():
        assert run.data.metrics[key] == pytest.approx(value)
    assert run.data.tags["synthmri.reader.complete"] == "true"
    assert "reader-study/confusion.csv" in {f.path for f in client.list_artifacts(run.info.run_id, "reader-study")}

    # Blinding, as the browser saw it: no generator, path or label tied to an item in any page or JSON.
    pages = [body for body in seen if body.startswith(b"<!doctype html>")]
    assert len(pages) == 2 and set(pages) == {page_html()}  # two page loads, the static page both times
    assert sum(b'"token"' in body for body in seen) >= total + 2  # every /api/next, answer and undo reply
    for body in (body for body in seen if body not in pages):
        text = body.decode().lower()
        assert not any(word in text for word in (*GENERATORS, "real", "synthetic", str(stores["real"]).lower()))
    assert all(png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in shots)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def test_finish_without_answers_writes_an_empty_table(stores, tmp_path, tiny_config):
    study = open_study(tmp_path, real=stores["real"], synthetic=[stores["stylegan2"]], per_source=1, seed=0)
    result = finish(study)
    assert result.accuracy is None and "0/2 answered; accuracy n/a (real n/a, stylegan2 n/a)" in result.summary()
    assert (tmp_path / "confusion.csv").read_text().splitlines() == [
        "source,kind,n,answered,answered_real,answered_synthetic,accuracy",
        "real,real,1,0,0,0,", "stylegan2,synthetic,1,0,0,0,"]
