"""The web page in a real browser: headless Chromium (Debian's package, driven by Playwright for
Python; no browser download) against a real server, choosing and dropping images."""

from __future__ import annotations

import shutil

import pytest

from cnnkit.serving import create_app, load_service_predictor, start_server_thread
from tests.test_serve import encode, train_colour_checkpoint

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed: `make browser` installs Debian's package (as root)",
)
CHROMIUM_ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    checkpoint = train_colour_checkpoint(tmp_path_factory.mktemp("browser") / "colours.pt")
    app = create_app(load_service_predictor(checkpoint))
    with start_server_thread(app) as server:
        yield server.url
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(server_url):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGUMENTS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda message: _is_problem(message) and problems.append(message.text))
        page.problems = problems
        page.goto(server_url + "/")
        yield page
        browser.close()


def _is_problem(message) -> bool:
    # The browser logs every non-2xx fetch; the 415 for the text file is the expected answer.
    expected = "status of 415 (Unsupported Media Type)"
    return message.type == "error" and expected not in message.text


def test_chosen_images_show_their_top_classes_and_errors(page):
    playwright_api = pytest.importorskip("playwright.sync_api")
    playwright_api.expect(page.locator("#model-info")).to_contain_text("4 classes")
    # Trained without a validation split: its accuracy is shown as what it is, a training figure.
    playwright_api.expect(page.locator("#model-info")).to_contain_text("training accuracy")
    playwright_api.expect(page.locator("#model-info")).not_to_contain_text("validation accuracy")
    page.set_input_files(
        "#file-input",
        files=[
            {"name": "sky.png", "mimeType": "image/png", "buffer": encode("blue")},
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"},
        ],
    )
    done = page.locator(".result[data-state=done]")
    playwright_api.expect(done).to_have_count(1)
    playwright_api.expect(done.locator(".bars li").first.locator(".label")).to_have_text("blue")
    playwright_api.expect(done.locator(".bars li")).to_have_count(4)  # top_k: all four classes
    failed = page.locator(".result[data-state=error]")
    playwright_api.expect(failed.locator(".error")).to_contain_text("Cannot decode notes.txt")
    playwright_api.expect(page.locator("#status")).to_have_text("Classified 2 images.")
    assert page.problems == []  # nothing blocked by the page's CSP, no script errors


def test_a_dropped_image_is_classified(page):
    playwright_api = pytest.importorskip("playwright.sync_api")
    page.click("#clear")
    transfer = page.evaluate_handle(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "tomato.png", { type: "image/png" }));
            return transfer;
        }""",
        list(encode("red")),
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    result = page.locator(".result[data-state=done]")
    playwright_api.expect(result.locator("figcaption")).to_have_text("tomato.png")
    playwright_api.expect(result.locator(".bars li").first.locator(".label")).to_have_text("red")
    assert page.problems == []
