"""The page ``tfrec serve`` answers at ``/``, in a real browser: Debian's Chromium, driven by Playwright.

One server (in this process, loopback, a free port) serves a copy of the session's export
whose ``items.tsv`` gives one history item a title full of markup; its sample customers
come from the session's data folder. Every list the page shows is compared with the REST
API's answer to the same request, and every title with ``items.tsv``.

A machine without Chromium (or Playwright) skips these tests with the reason; under CI
(the ``CI`` environment variable set, as ``.ci/run`` does) that is a failure instead.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from serving.export import RETRIEVE, SEARCH, SIMILAR
from serving.items import read_items, write_items
from serving.server import ANY_PORT, ModelServer
from serving.server.samples import sample_customers
from tfrec.config import ServeConfig

CHROMIUM = os.environ.get("TFREC_CHROMIUM", "/usr/bin/chromium")
MAX_HISTORY = 50  # the server's limit: also the most ids one titles lookup may name
K = 8
HOSTILE = ("<script>window.__injected = 1</script><img src=x onerror=\"window.__injected = 1\">"
           " Mug & \"Saucer\" 'set' </td>")
SCREENSHOT = os.environ.get("TFREC_PAGE_SCREENSHOT")
"""Where to keep the screenshot the first browser test makes (else a temporary folder)."""


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set TFREC_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the page's browser tests cannot run: {missing}; CI must run them (.ci/run installs it)")
        pytest.skip(f"the page's browser tests need a browser: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def sample(sample_data_dir):
    return sample_customers(sample_data_dir, MAX_HISTORY)[0]


@pytest.fixture(scope="module")
def history(sample) -> list[str]:
    return sample.history[-4:]


@pytest.fixture(scope="module")
def shown_export(export_dir, history, tmp_path_factory) -> Path:
    """A copy of the session's export in which the history's first item has a title full of markup."""
    out = tmp_path_factory.mktemp("page") / "export"
    shutil.copytree(export_dir, out)
    texts = read_items(out)
    texts[history[0]] = HOSTILE
    write_items(out, texts.keys(), texts.values())
    return out


@pytest.fixture(scope="module")
def server(shown_export, sample_data_dir):
    with ModelServer(shown_export, port=ANY_PORT, grpc_port=0, limits=ServeConfig(max_history=MAX_HISTORY),
                     examples=sample_data_dir, log=lambda _: None) as running:
        yield running


@pytest.fixture(scope="module")
def texts(shown_export) -> dict[str, str]:
    return read_items(shown_export)


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(120_000)  # a guard against a page that never settles, not a measure
    opened.errors = []
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    context.close()


def predict(server, model: str, inputs: dict) -> dict:
    answer = requests.post(f"{server.rest_url}/v1/models/{model}:predict", json={"inputs": inputs}, timeout=60)
    assert answer.status_code == 200, answer.text
    return {name: values[0] for name, values in answer.json()["outputs"].items()}


def settle(page, action) -> None:
    """Runs ``action`` (a navigation or a click) and waits until the page has drawn every view again."""
    before = page.evaluate("document.body ? document.body.dataset.ready || '' : ''")
    action()
    page.wait_for_function("before => document.body.dataset.ready && document.body.dataset.ready !== before",
                           arg=before)
    assert page.errors == []


def rows(page, table: str) -> list[tuple[str, str]]:
    """``(item id, title)`` of each row of a result table, top to bottom."""
    found = page.eval_on_selector_all(
        f"#{table} tbody tr",
        "rows => rows.map(r => [r.dataset.itemId, r.querySelector('td:nth-child(2) .title').textContent])")
    return [tuple(row) for row in found]


def url_state(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


# ---------------------------------------------------------------- the page's routes, over HTTP


def test_the_page_and_its_files_carry_a_policy_that_allows_only_this_server(server):
    for path, kind in [("/", "text/html"), ("/index.html", "text/html"), ("/page/page.js", "javascript"),
                       ("/page/page.css", "text/css"), ("/page/icon.svg", "image/svg+xml")]:
        answer = requests.get(f"{server.rest_url}{path}", timeout=30)
        assert answer.status_code == 200 and kind in answer.headers["Content-Type"], path
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/page/nope", "/page/../app.py", "/page/static/page.js", "/page", "/favicon.ico"):
        answer = requests.get(f"{server.rest_url}{path}", timeout=30)
        assert answer.status_code == 404 and "no such endpoint" in answer.json()["error"], path
    assert requests.post(f"{server.rest_url}/page/info", timeout=30).status_code == 404
    text = server.describe()
    assert server.rest_url.startswith("http://127.0.0.1:")  # the page listens where the API does: loopback
    assert f"Page  {server.rest_url}/" in text and "sample customers from" in text


def test_info_names_the_served_models_the_limits_and_the_sample_customers(server, shown_export, sample, texts):
    info = requests.get(f"{server.rest_url}/page/info", timeout=30).json()
    assert info["models"] == {p.name: 1 for p in shown_export.iterdir() if p.is_dir()}
    assert info["items"] == len(texts) and info["category_field"] is None
    assert info["max_titles"] == info["max_history"] == MAX_HISTORY
    assert len(info["samples"]) == 8 and info["samples"][0] == sample.to_json()
    for customer in info["samples"]:
        assert 0 < len(customer["history"]) <= MAX_HISTORY and customer["next_basket"]
        assert set(customer["history"]) | set(customer["next_basket"]) <= set(texts)


def test_titles_are_looked_up_per_id_within_the_servers_limit(server, history, texts):
    url = f"{server.rest_url}/page/titles"
    answer = requests.get(url, params=[("id", history[0]), ("id", history[1]), ("id", "no-such-item")], timeout=30)
    assert answer.json() == {"titles": {history[0]: HOSTILE, history[1]: texts[history[1]]}}
    ids = list(texts)[:MAX_HISTORY + 1]
    assert len(requests.get(url, params=[("id", i) for i in ids[:-1]], timeout=30).json()["titles"]) == MAX_HISTORY
    answer = requests.get(url, params=[("id", i) for i in ids], timeout=30)
    assert answer.status_code == 400 and "serve.max_history" in answer.json()["error"]
    answer = requests.get(url, params={"ids": history[0]}, timeout=30)
    assert answer.status_code == 400 and "unknown parameter 'ids'" in answer.json()["error"]


def test_titles_follow_a_new_items_file(server, shown_export, history, texts):
    def title() -> str:
        return requests.get(f"{server.rest_url}/page/titles", params={"id": history[1]}, timeout=30).json()[
            "titles"][history[1]]

    changed = dict(texts) | {history[1]: "A NEW TITLE FROM A NEW EXPORT"}
    try:
        write_items(shown_export, changed.keys(), changed.values())
        wait_for(lambda: title() == changed[history[1]], "the new title")
    finally:
        write_items(shown_export, texts.keys(), texts.values())
    wait_for(lambda: title() == texts[history[1]], "the title again")


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Polls ``condition`` until it holds; ``timeout`` only guards against waiting for ever."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_without_the_page_only_the_model_api_answers(shown_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(shown_export / SIMILAR, export / SIMILAR)
    with ModelServer(export, port=ANY_PORT, grpc_port=0, page=False, log=lambda _: None) as running:
        assert requests.get(f"{running.rest_url}/", timeout=30).status_code == 404
        assert requests.get(f"{running.rest_url}/page/info", timeout=30).status_code == 404
        assert requests.get(f"{running.rest_url}/v1/models/{SIMILAR}", timeout=30).status_code == 200
        assert "Page" not in running.describe()


def test_serve_refuses_examples_that_are_not_a_data_folder(shown_export, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tfrec.app.cli", "serve", "--export", str(shown_export),
                           "--port", "0", "--grpc-port", "0", "--examples", str(tmp_path)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path}/vocab/items.txt not found" in done.stderr and "--examples" in done.stderr


# ---------------------------------------------------------------- the page, in Chromium


def test_a_history_shows_its_recommendations_with_titles_in_the_served_order(page, server, history, texts,
                                                                           tmp_path):
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k={K}"))
    served = predict(server, RETRIEVE, {"history": [history], "k": K, "exclude_history": False})
    assert rows(page, "recs") == [(item, texts[item]) for item in served["item_ids"]]
    because = page.eval_on_selector_all("#recs tbody td.because .title", "cells => cells.map(c => c.textContent)")
    assert because == [texts[item] for item in served["because_ids"] if item]
    scores = page.eval_on_selector_all("#recs tbody td:nth-child(3)", "cells => cells.map(c => c.textContent)")
    assert scores == [f"{score:.3f}" for score in served["scores"]]
    shown = page.eval_on_selector_all("#history li", "items => items.map(i => [i.dataset.itemId, "
                                                    "i.querySelector('.title').textContent])")
    assert [tuple(row) for row in shown] == [(item, texts[item]) for item in history]

    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "page.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clicking_a_product_shows_its_similar_products_and_adds_it_to_the_history(page, server, history, texts):
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k={K}"))
    item = next(item for item, _ in rows(page, "recs") if item not in history)
    settle(page, lambda: page.click(f"#recs tbody tr[data-item-id='{item}'] td:nth-child(2) .title"))
    assert url_state(page)["item"] == [item]
    assert page.text_content("#product-title") == texts[item] and page.text_content("#product-id") == item
    served = predict(server, SIMILAR, {"item_id": [item], "k": K})
    assert rows(page, "similar") == [(similar, texts[similar]) for similar in served["item_ids"]]

    settle(page, lambda: page.click("#product-add"))
    longer = [*history, item]
    assert url_state(page)["history"] == [",".join(longer)]
    assert page.eval_on_selector_all("#history li", "items => items.map(i => i.dataset.itemId)") == longer
    served = predict(server, RETRIEVE, {"history": [longer], "k": K, "exclude_history": False})
    assert [item for item, _ in rows(page, "recs")] == served["item_ids"]
    settle(page, lambda: page.go_back())
    assert page.eval_on_selector_all("#history li", "items => items.map(i => i.dataset.itemId)") == history


def test_a_search_shows_what_the_search_model_answers_blended_with_the_history(page, server, history, texts):
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k={K}"))
    page.fill("#q", "heart")
    settle(page, lambda: page.press("#q", "Enter"))
    assert url_state(page)["q"] == ["heart"]
    served = predict(server, SEARCH, {"query": ["heart"], "k": K, "history": [history]})
    assert rows(page, "search-results") == [(item, texts[item]) for item in served["item_ids"]]
    assert "blended with the history" in page.text_content("#search-status")


def test_the_url_opens_the_whole_view(page, server, history, texts):
    item = history[-1]
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k=3&exclude=1&q=candle"
                                   f"&item={item}"))
    assert page.input_value("#k") == "3" and page.is_checked("#exclude") and page.input_value("#q") == "candle"
    served = predict(server, RETRIEVE, {"history": [history], "k": 3, "exclude_history": True})
    assert [item for item, _ in rows(page, "recs")] == served["item_ids"]
    assert not set(served["item_ids"]) & set(history)
    assert len(rows(page, "search-results")) == len(rows(page, "similar")) == 3
    assert page.text_content("#product-title") == texts[item]


def test_a_title_holding_markup_is_shown_as_text(page, server, history):
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k={K}&item={history[0]}"))
    assert page.text_content(f"#history li[data-item-id='{history[0]}'] .title") == HOSTILE
    assert page.text_content("#product-title") == HOSTILE
    assert page.evaluate("window.__injected") is None
    assert page.eval_on_selector_all("script", "scripts => scripts.map(s => s.getAttribute('src'))") == [
        "/page/page.js"]
    assert page.eval_on_selector_all("main img", "images => images.length") == 0


def test_a_sample_customer_opens_with_the_next_basket_marked(page, server, sample):
    settle(page, lambda: page.goto(server.rest_url))
    options = page.eval_on_selector_all("#sample option", "options => options.map(o => o.textContent)")
    assert options[1] == f"{sample.user_id} ({len(sample.history)} items)" and len(options) > 2
    settle(page, lambda: page.select_option("#sample", "0"))
    assert url_state(page)["history"] == [",".join(sample.history)]
    served = predict(server, RETRIEVE, {"history": [sample.history], "k": 10, "exclude_history": False})
    assert [item for item, _ in rows(page, "recs")] == served["item_ids"]
    marked = page.eval_on_selector_all("#recs tbody tr.hit", "rows => rows.map(r => r.dataset.itemId)")
    assert marked == [item for item in served["item_ids"] if item in sample.next_basket]
    assert f"{len(marked)} of these 10 w" in page.text_content("#recs-status")


def test_an_error_from_the_model_is_shown_in_its_place(page, server, history):
    unknown = "no-such-item-id"
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&item={unknown}"))
    assert f"'{unknown}' is not an item of {SIMILAR}'s catalogue" in page.text_content("#similar-status")
    assert page.text_content("#product-title") == "(not in this catalogue)"
    assert len(rows(page, "recs")) == 10  # the other views still render


def test_ids_named_like_what_every_object_inherits_are_unknown_products(page, server, history):
    inherited = ["constructor", "__proto__", "toString", "hasOwnProperty", "valueOf"]
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(inherited)}&item=constructor"))
    shown = page.eval_on_selector_all("#history li", "items => items.map(i => [i.dataset.itemId, "
                                                    "i.querySelector('.title').textContent, "
                                                    "i.querySelector('.title').classList.contains('unknown')])")
    assert [tuple(row) for row in shown] == [(item, "(not in this catalogue)", True) for item in inherited]
    assert page.text_content("#product-title") == "(not in this catalogue)"
    assert "function" not in page.text_content("main")


def test_long_lists_are_titled_through_lookups_within_the_servers_limit(page, server, texts):
    history = list(texts)[-MAX_HISTORY:]
    lookups = []
    page.on("request", lambda request: lookups.append(parse_qs(urlsplit(request.url).query).get("id", []))
            if urlsplit(request.url).path == "/page/titles" else None)
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k=100"))
    served = predict(server, RETRIEVE, {"history": [history], "k": 100, "exclude_history": False})
    assert rows(page, "recs") == [(item, texts[item]) for item in served["item_ids"]]
    assert len(lookups) >= 2 and max(len(ids) for ids in lookups) == MAX_HISTORY
    assert len(set(history) | set(served["item_ids"])) <= sum(len(ids) for ids in lookups)


def test_the_page_asks_nothing_of_any_other_host(page, server, history):
    asked = []
    page.on("request", lambda request: asked.append(request.url))
    settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&q=mug&item={history[0]}"))
    settle(page, lambda: page.click("#recs tbody tr:first-child td:nth-child(2) .title"))
    assert asked and all(url.startswith(f"{server.rest_url}/") for url in asked), asked
    assert {urlsplit(url).path for url in asked} >= {"/", "/page/page.js", "/page/page.css", "/page/info",
                                                    "/page/titles", f"/v1/models/{RETRIEVE}:predict"}
    policy = requests.get(server.rest_url, timeout=30).headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "http" not in policy
    static = Path(__file__).resolve().parents[2] / "serving" / "server" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        outside = [url for url in re.findall(r"[a-z]+://[^\s\"')]+|//[a-z0-9.-]+\.[a-z]{2,}", text, re.I)
                   if url != "http://www.w3.org/2000/svg"]  # an XML namespace name, never fetched
        assert outside == [], f"{path.name} names {outside}"


# ---------------------------------------------------------------- pitches (tfrec serve --copy)


def test_the_page_shows_each_recommendation_s_pitch_from_a_copy_output(browser, shown_export, history, texts,
                                                                       tmp_path):
    """A ``tfrec copy`` output's records (one generated, the others templates) under the products."""
    import json

    from tfrec.copywriter.guard import template

    with ModelServer(shown_export, port=ANY_PORT, grpc_port=0, limits=ServeConfig(max_history=MAX_HISTORY),
                     log=lambda _: None) as plain:
        served = predict(plain, RETRIEVE, {"history": [history], "k": K, "exclude_history": False})["item_ids"]
    pitched = served[:3]
    records = [{"item_id": item, "because_id": None, "title": texts[item], "source": "template",
                "pitch": template(texts[item]), "failed": {"length": 2}, "samples": 2, "score": None}
               for item in pitched]
    records[0] |= {"source": "generated", "pitch": "A <b>bright</b> pick for a cosy kitchen.", "failed": {}}
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "copy-00000-of-00001.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with ModelServer(shown_export, port=ANY_PORT, grpc_port=0, limits=ServeConfig(max_history=MAX_HISTORY),
                     log=lambda _: None, copy=copy) as server:
        answer = requests.get(f"{server.rest_url}/page/titles", params={"id": served[:4]}, timeout=30).json()
        assert sorted(answer["pitches"]) == sorted(pitched)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        settle(page, lambda: page.goto(f"{server.rest_url}/?history={','.join(history)}&k={K}"))
        shown = page.eval_on_selector_all(
            "#recs tbody tr", "rows => rows.map(r => [r.dataset.itemId, r.querySelector('.pitch') ? "
                              "[r.querySelector('.pitch').textContent, r.querySelector('.pitch').className] : null])")
        expected = {r["item_id"]: [r["pitch"], f"pitch {r['source']}"] for r in records}
        assert [(item, pitch) for item, pitch in shown] == [(item, expected.get(item)) for item in served]
        assert page.evaluate("window.__injected === undefined && !document.querySelector('#recs b')")
        screenshot = Path(SCREENSHOT).with_name("page-copy.png") if SCREENSHOT else tmp_path / "page-copy.png"
        page.screenshot(path=screenshot, full_page=True)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        context.close()
