"""The playground page at `/`, driven in a real headless Chromium (Debian's `chromium`, which
.ci/run installs, through Playwright; never `playwright install`, which needs the internet)
against the session's graph on the random-weight test checkpoint. What the page draws must be
what the API answers for the same request. Screenshots of each state go to
test-output/playground/."""

from __future__ import annotations

import base64
import json
import mimetypes
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.apps import app_beside, wait_until_running
from tests.support.photos import photos

OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "playground"
PHOTOS = dict(photos())
CAT = PHOTOS["chelsea.webp"]
LABELS = ["a cat", "a dog", "a car"]
KEYED_APP, KEYED_ROUTE, KEY = "siglip_playground_keys", "/keyed", "playground-key-5b1e"
PHONE = {"width": 390, "height": 844}


def _file(name: str, raw: bytes, mime: str = "image/webp") -> dict:
    return {"name": name, "mimeType": mime, "buffer": raw}


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium (.ci/run does)")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, serve_url):
    """A fresh page; afterwards, no request may have left the server's origin (the page must
    work on an offline cluster)."""
    context = browser.new_context()
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    yield page
    context.close()
    assert [url for url in requested if not url.startswith((serve_url, "data:"))] == []


def _bars(page: Page) -> list[tuple[str, float, str]]:
    """(name, exact score, shown text) of each bar, top to bottom."""
    return page.eval_on_selector_all("section:not([hidden]) .bars li", """items => items.map(item => [
        item.querySelector('.name').textContent, Number(item.dataset.score),
        item.querySelector('.value').textContent])""")


def _classify(page: Page, raw: bytes = CAT, name: str = "chelsea.webp", templates: str = ""):
    page.set_input_files("#classify-file", [_file(name, raw)])
    expect(page.locator("#classify-preview")).to_be_visible()
    page.fill("#classify-labels", "\n".join(LABELS))
    page.fill("#classify-templates", templates)
    with page.expect_response(lambda response: response.url.endswith("/v1/classify")) as answer:
        page.click("#classify-form button[type=submit]")
    return answer.value


def test_the_page_loads_without_a_key_and_names_every_control(page, serve_url):
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    assert page.goto(serve_url + "/").status == 200
    expect(page).to_have_title("SigLIP playground")
    expect(page.locator("#model")).to_contain_text("Model: ")
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select')]
        .filter(control => control.labels.length === 0 && !control.getAttribute('aria-label'))
        .map(control => control.id || control.name)""")
    assert unnamed == []
    # Keyboard: the arrow keys move between the tabs.
    page.focus("#tab-classify")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#panel-compare")).to_be_visible()
    expect(page.locator("#tab-compare")).to_be_focused()
    assert errors == []


def test_classify_draws_what_the_api_answers(page, serve_url, client):
    page.goto(serve_url + "/")
    answer = _classify(page)
    sent = json.loads(answer.request.post_data)
    assert sent["labels"] == LABELS and sent["input"][0].startswith("data:image/webp;base64,")
    expect(page.locator("#classify-result .bars li")).to_have_count(3)
    # The same request, sent by a client: the page shows exactly its numbers, highest first.
    predictions = client.post("/v1/classify", json=sent).json()["data"][0]["predictions"]
    assert [(name, score) for name, score, _ in _bars(page)] == \
        [(prediction["label"], prediction["score"]) for prediction in predictions]
    for (_, score, shown), prediction in zip(_bars(page), predictions):  # three digits shown
        assert shown.endswith("%") and float(shown[:-1]) == pytest.approx(score * 100, rel=5e-3)
    # The curl command carries the very body that was sent.
    curl = page.text_content("#classify-curl")
    assert curl.startswith(f"curl {serve_url}/v1/classify")
    assert json.loads(curl.split("-d '", 1)[1].rstrip("'")) == sent
    page.screenshot(path=OUTPUT / "classify.png", full_page=True)
    # README's picture (docs/images/playground-classify.png): the tab alone, at a narrow width.
    page.set_viewport_size({"width": 640, "height": 900})
    page.locator("#panel-classify").screenshot(path=OUTPUT / "readme-classify.png")
    # A phone-sized screen: everything fits its width.
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=OUTPUT / "classify-phone.png", full_page=True)


def test_several_templates_are_sent_as_a_prompt_ensemble(page, serve_url, client):
    page.goto(serve_url + "/")
    templates = ["a photo of {}.", "a blurry photo of {}."]
    sent = json.loads(_classify(page, templates="\n".join(templates)).request.post_data)
    assert sent["hypothesis_template"] == templates
    expect(page.locator("#classify-result .bars li")).to_have_count(3)
    predictions = client.post("/v1/classify", json=sent).json()["data"][0]["predictions"]
    assert [score for _, score, _ in _bars(page)] == [prediction["score"] for prediction in predictions]


def test_compare_ranks_texts_for_an_image_and_images_for_a_text(page, serve_url, client):
    page.goto(serve_url + "/")
    page.click("#tab-compare")
    page.set_input_files("#compare-image", [_file("chelsea.webp", CAT)])
    with page.expect_response(lambda response: response.url.endswith("/v1/rerank")) as answer:
        page.click("#compare-form button[type=submit]")
    sent = json.loads(answer.value.request.post_data)
    expect(page.locator("#compare-result .bars li")).to_have_count(len(sent["documents"]))
    results = client.post("/v1/rerank", json=sent).json()["results"]
    assert [(name, score) for name, score, _ in _bars(page)] == \
        [(sent["documents"][result["index"]], result["relevance_score"]) for result in results]
    page.screenshot(path=OUTPUT / "compare-image-texts.png", full_page=True)

    page.check("input[value=text-images]")
    names = ["astronaut.jpg", "coffee.png", "chelsea.webp"]
    page.set_input_files("#compare-images", [_file(name, PHOTOS[name], "image/png") for name in names])
    with page.expect_response(lambda response: response.url.endswith("/v1/rerank")) as answer:
        page.click("#compare-form button[type=submit]")
    sent = json.loads(answer.value.request.post_data)
    assert sent["query"] == "a photo of a cat" and len(sent["documents"]) == 3
    expect(page.locator("#compare-result .bars li")).to_have_count(3)
    results = client.post("/v1/rerank", json=sent).json()["results"]
    assert [(name, score) for name, score, _ in _bars(page)] == \
        [(names[result["index"]], result["relevance_score"]) for result in results]
    page.screenshot(path=OUTPUT / "compare-text-images.png", full_page=True)


def test_an_undecodable_file_shows_the_apis_error(page, serve_url, client):
    page.goto(serve_url + "/")
    answer = _classify(page, raw=b"these bytes are no image", name="broken.jpg")
    assert answer.status == 400
    message = client.post("/v1/classify", json=json.loads(answer.request.post_data)).json()["error"]["message"]
    expect(page.locator("#classify-error")).to_have_text(f"400: {message}")
    assert "input[0]" in message  # the API names the image
    expect(page.locator("#classify-result .bars li")).to_have_count(0)
    page.screenshot(path=OUTPUT / "classify-error.png", full_page=True)


def test_search_adds_photos_to_a_collection_and_draws_what_the_api_answers(page, serve_url, client):
    name, names = "playground-search", ["astronaut.jpg", "coffee.png", "chelsea.webp"]
    page.goto(serve_url + "/")
    page.click("#tab-search")
    page.click("#search-add summary")
    page.fill("#add-name", name)
    page.set_input_files("#add-images", [_file(photo, PHOTOS[photo], mimetypes.guess_type(photo)[0])
                                         for photo in names])
    with page.expect_response(lambda response: response.url.endswith(f"/v1/collections/{name}/items")) as added:
        page.click("#add-form button[type=submit]")
    assert added.value.status == 200
    expect(page.locator("#add-result")).to_have_text(f"Added 3 images to '{name}', which now holds 3 items.")
    expect(page.locator("#search-collection")).to_have_value(name)
    try:
        with page.expect_response(lambda response: response.url.endswith(f"/{name}/search")) as answer:
            page.click("#search-form button[type=submit]")
        sent = json.loads(answer.value.request.post_data)
        assert sent == {"query": "a photo of a cat", "top_k": 12}
        expect(page.locator("#search-result .bars li")).to_have_count(3)
        matches = client.post(f"/v1/collections/{name}/search", json=sent).json()["data"]
        assert [(item_id, score) for item_id, score, _ in _bars(page)] == \
            [(match["id"], match["score"]) for match in matches]
        # The page stored the photographs themselves (a thumbnail only beside them, in metadata):
        # each score is /v1/rerank's for the original file.
        reranked = client.post("/v1/rerank", json={"query": sent["query"], "documents": [
            {"image": base64.b64encode(PHOTOS[photo]).decode()} for photo in names]}).json()["results"]
        assert {match["id"]: match["score"] for match in matches} == pytest.approx(
            {names[result["index"]]: result["relevance_score"] for result in reranked}, abs=1e-6)
        for match in matches:
            assert match["metadata"]["thumbnail"].startswith("data:image/jpeg;base64,")
        assert page.eval_on_selector_all("#search-result .bars li img", "images => images.every("
                                         "image => image.complete && image.naturalWidth > 0)")
        page.screenshot(path=OUTPUT / "search-text.png", full_page=True)

        # An image query: the photograph itself comes first.
        page.check("input[value=by-image]")
        page.set_input_files("#search-image", [_file("chelsea.webp", CAT)])
        with page.expect_response(lambda response: response.url.endswith(f"/{name}/search")) as answer:
            page.click("#search-form button[type=submit]")
        sent = json.loads(answer.value.request.post_data)
        expect(page.locator("#search-result .bars li")).to_have_count(3)
        matches = client.post(f"/v1/collections/{name}/search", json=sent).json()["data"]
        assert matches[0]["id"] == "chelsea.webp"
        assert [(item_id, score) for item_id, score, _ in _bars(page)] == \
            [(match["id"], match["score"]) for match in matches]
        page.screenshot(path=OUTPUT / "search-image.png", full_page=True)
    finally:
        client.delete(f"/v1/collections/{name}")


def _keyed(app: dict) -> None:
    app["runtime_env"] = {"env_vars": {**app["runtime_env"]["env_vars"], "SIGLIP_API_KEYS": KEY}}


@pytest.fixture(scope="module")
def keyed_url(serve_url, serve_config):
    with app_beside(serve_config, KEYED_APP, KEYED_ROUTE, _keyed):
        wait_until_running(KEYED_APP)
        yield serve_url + KEYED_ROUTE


def test_with_keys_the_page_loads_a_wrong_key_is_refused_and_the_right_one_works(page, keyed_url):
    assert page.goto(keyed_url).status == 200  # the page itself needs no key
    expect(page.locator("#model")).to_have_text("This server asks for an API key.")
    for key in ("", "wrong-key"):
        page.fill("#api-key", key)
        answer = _classify(page)
        assert answer.status == 401
        expect(page.locator("#classify-error")).to_contain_text("401: ")
        assert answer.request.headers.get("authorization") == (f"Bearer {key}" if key else None)
    page.screenshot(path=OUTPUT / "keys-refused.png", full_page=True)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model")).to_contain_text("Model: ")
    answer = _classify(page)
    assert answer.status == 200 and answer.request.headers["authorization"] == f"Bearer {KEY}"
    expect(page.locator("#classify-result .bars li")).to_have_count(3)
    expect(page.locator("#classify-error")).to_have_text("")
    # The curl command names the key only as a variable; the key stays for this tab's session.
    curl = page.text_content("#classify-curl")
    assert '"Authorization: Bearer $SIGLIP_API_KEY"' in curl and KEY not in curl
    page.screenshot(path=OUTPUT / "keys-accepted.png", full_page=True)
    page.reload()
    expect(page.locator("#api-key")).to_have_value(KEY)
    assert httpx.get(f"{keyed_url}/v1/models", timeout=30).status_code == 401
