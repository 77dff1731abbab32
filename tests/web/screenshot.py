"""Redraw docs/page.png, the README's picture of the page: the committed model answering three
CIFAR-10 test images and a text file, with two heat maps shown.

    .venv/bin/python -m tests.web.screenshot [OUTPUT.png]
"""

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect

from tests.conftest import FIXTURES, REPO
from tests.servers import serving
from tests.web.browser import chromium

SHIPPED = REPO / "models" / "cifar10"
IMAGES = ["test00001_ship.png", "test00022_deer.png", "test00000_cat.png"]
SHOW_MAPS = ["test00001_ship.png", "test00022_deer.png"]
VIEWPORT = {"width": 1180, "height": 900}
ANSWER_TIMEOUT_MS = 120_000  # /explain is 50 model inputs per image; CI machines are busy


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        notes = Path(work) / "notes.txt"
        notes.write_text("a shopping list, not a picture\n")
        files = [FIXTURES / "cifar10" / name for name in IMAGES] + [notes]
        with serving(SHIPPED) as port, chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file-input", files)
            cards = page.locator(".card")
            done = cards.and_(page.locator('[aria-busy="false"]'))
            expect(done).to_have_count(len(files), timeout=ANSWER_TIMEOUT_MS)
            for name in SHOW_MAPS:
                card = cards.filter(has=page.get_by_role("heading", name=name, exact=True))
                card.locator("button.toggle").click()
                expect(card.locator("img.heatmap")).to_be_visible()
            page.screenshot(path=str(output), full_page=True)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "page.png")
