"""GET /, the page for people: served from local files, talking only to the documented API, and
driven in a real browser at phone size against the real app."""

import re
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from playwright.sync_api import ConsoleMessage, expect

from tests.conftest import FIXTURES, LABELS, REPO
from tests.servers import serving
from tests.web.browser import PHONE, chromium, needs_chromium

WEB = REPO / "app" / "web"
IMAGES = [FIXTURES / "cifar10" / "test00000_cat.png", FIXTURES / "cifar10" / "test00001_ship.png"]
# Generous: each card is one /explain (50 model inputs) and CI machines are busy.
ANSWER_TIMEOUT_MS = 120_000
PERCENT = re.compile(r"^\d{1,3}\.\d %$")
# fetch(`/path?query`, options): the path and the options (the method, if not GET).
FETCH = re.compile(r"fetch\(\s*[`'\"](/[a-z/]*)[^`'\"]*[`'\"]([^)]*)\)")


def test_the_page_and_its_assets_are_served_locally(client) -> None:
    page = client.get("/")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'accept="image/*"' in page.text and "multiple" in page.text
    assert 'href="/docs"' in page.text and 'href="/model"' in page.text
    assert "://" not in re.sub(r'href="https?://[^"]*"', "", page.text)  # no CDN: nothing remote
    for asset in ("/static/web/app.js", "/static/web/style.css"):
        assert f'"{asset}"' in page.text
        assert client.get(asset).status_code == 200
    assert "image-rendering: pixelated" in client.get("/static/web/style.css").text


def test_the_script_calls_only_documented_endpoints(client) -> None:
    """Every URL the page's script fetches is an operation in the OpenAPI document."""
    script = (WEB / "app.js").read_text()
    documented = client.get("/openapi.json").json()["paths"]

    calls = FETCH.findall(script)
    called = {(path, "post" if "POST" in options else "get") for path, options in calls}

    assert called == {("/model", "get"), ("/explain", "post")}
    for path, method in called:
        assert method in documented[path], f"{method.upper()} {path} is not documented"
    assert script.count("fetch(") == len(calls)  # none the pattern missed
    assert "XMLHttpRequest" not in script and "://" not in script  # no other way, no other host


def image_pixels(path: Path) -> list[int]:
    """The PNG's pixels as a canvas's getImageData gives them: RGBA, row by row."""
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.uint8)
    return rgba.ravel().tolist()


@needs_chromium
def test_at_phone_size_images_get_answers_a_text_file_an_error_and_the_map_shows(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a picture\n")
    page_errors: list[str] = []
    console_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    with serving(tiny_model_dir) as port, chromium() as browser:
        page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.on("console", on_console)
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#model")).to_contain_text("model cifar10, version 1")
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        expect(page.locator("#model")).to_contain_text(
            f"computed by {health['backend']} in {health['precision']}."
        )

        page.set_input_files("#file-input", [*IMAGES, notes])

        cards = page.locator(".card")
        expect(cards).to_have_count(3)
        for path in IMAGES:
            card = cards.filter(has=page.get_by_role("heading", name=path.name, exact=True))
            rows = card.locator(".labels li")
            expect(rows).to_have_count(3, timeout=ANSWER_TIMEOUT_MS)
            expect(card.locator(".labels")).to_have_attribute(
                "aria-label", f"Top 3 labels for {path.name}"
            )
            expect(card.locator(".status")).to_have_text(re.compile(r"^Most likely "))
            for row in rows.all():
                assert row.locator(".label").inner_text() in LABELS
                assert PERCENT.match(row.locator(".percent").inner_text())
            expect(card.locator(".answered-by")).to_have_text(
                "Answered by model cifar10, version 1."
            )
            expect(card.locator("canvas.model-input")).to_have_attribute(
                "aria-label", re.compile(r"32 by 32 pixel picture")
            )
            drawn = card.locator("canvas.model-input").evaluate(
                "c => Array.from(c.getContext('2d').getImageData(0, 0, 32, 32).data)"
            )
            assert drawn == image_pixels(path)  # the 32x32 upload is the model input itself

        failed = cards.filter(has=page.get_by_role("heading", name="notes.txt", exact=True))
        expect(failed.get_by_role("alert")).to_have_text(
            re.compile(r"^notes\.txt: not an image in a supported format"),
            timeout=ANSWER_TIMEOUT_MS,
        )
        expect(failed.locator(".labels")).to_be_hidden()

        # The overlay toggle, reached and pressed with the keyboard alone.
        ship = cards.filter(has=page.get_by_role("heading", name=IMAGES[1].name, exact=True))
        toggle = ship.get_by_role("button", name="Show where it looked")
        heatmap = ship.locator("img.heatmap")
        expect(heatmap).to_be_hidden()
        for _ in range(40):
            page.keyboard.press("Tab")
            if toggle.evaluate("button => button === document.activeElement"):
                break
        else:
            raise AssertionError("the overlay toggle is not reachable with Tab")
        page.keyboard.press("Enter")
        expect(toggle).to_have_attribute("aria-pressed", "true")
        expect(heatmap).to_be_visible()
        assert heatmap.evaluate("img => img.complete && img.naturalWidth") == 256
        box, canvas = heatmap.bounding_box(), ship.locator("canvas").bounding_box()
        assert box == canvas  # drawn over the model input, not beside it

        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    assert page_errors == []
    # The browser logs the API's 415 for notes.txt as a failed resource: that is the expected
    # answer, not a script error. Anything else is.
    unexpected = [m for m in console_errors if not re.search(r"status of 415\b", m)]
    assert unexpected == [] and len(console_errors) <= 1, console_errors


@needs_chromium
def test_not_sure_answers_keep_their_top_3_and_the_cards_can_be_cleared(
    tiny_model_dir: Path,
) -> None:
    """UNCERTAIN_BELOW=1 flags every answer (no softmax of the tiny model reaches 1)."""
    with serving(tiny_model_dir, UNCERTAIN_BELOW="1") as port, chromium() as browser:
        page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file-input", IMAGES[:1])

        card = page.locator(".card")
        expect(card.locator(".labels li")).to_have_count(3, timeout=ANSWER_TIMEOUT_MS)
        expect(card.locator(".status")).to_have_text(
            re.compile(r"^Not sure, maybe none of the ten\. Best guess \w+, [\d.]+ %\.$")
        )

        # A phone cannot paste with Ctrl+V, so the page does not offer it; a desktop does.
        expect(page.locator(".paste-hint")).to_be_hidden()
        page.get_by_role("button", name="Clear the answers").click()
        expect(page.locator(".card")).to_have_count(0)
        expect(page.get_by_role("button", name="Clear the answers")).to_be_hidden()
        desktop = browser.new_page(viewport={"width": 1280, "height": 800})
        desktop.goto(f"http://127.0.0.1:{port}/")
        expect(desktop.locator(".paste-hint")).to_be_visible()
