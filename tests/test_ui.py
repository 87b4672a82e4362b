"""The web UI end to end in headless Chromium (Playwright driving the system chromium):
browse, search, the model and version pages, try-it with JSON and with an image upload,
comparison, download, and admin alias moves that need an admin token."""

from __future__ import annotations

import re
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

import modelcrate as mc
from conftest import Digits, Server
from modelcrate.trust.keys import generate

ADMIN, VIEWER = "admin-token-0123456789", "viewer-token-0123456789"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.stderr.write(
            "\n*** SKIPPING UI tests: chromium is not installed (.ci/run installs it)\n"
        )
        pytest.skip("chromium is not installed")
    return found


@pytest.fixture
def ui(
    tmp_path: Path,
    digits_crate_path: Path,
    digits: Digits,
    start_server: Callable[..., Server],
) -> Iterator[tuple[Server, mc.Registry]]:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.set_alias("digits", "prod", "1.0.0")
    generate(tmp_path / "me")
    registry.sign("digits@1.0.0", tmp_path / "me.key")
    registry.set_policy(trust=[tmp_path / "me.pub"])
    mc.optimize("digits@1.0.0", quantize="int8", registry=registry)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ops"\ntoken = "{ADMIN}"\nscopes = ["read", "admin"]\n'
        f'[[tokens]]\nname = "viewer"\ntoken = "{VIEWER}"\nscopes = ["read", "infer"]\n'
    )
    yield start_server(registry.root, "digits@prod", "--token-file", str(tokens)), registry


@pytest.fixture
def page(ui: tuple[Server, mc.Registry]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.set_default_timeout(15_000)
        yield tab
        browser.close()


def png(pixels: np.ndarray) -> bytes:
    """A greyscale PNG written with the standard library (no imaging package needed)."""
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row) for row in pixels.astype(np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_browse_search_and_read_a_version(
    ui: tuple[Server, mc.Registry], page: object, tmp_path: Path
) -> None:
    server, _ = ui
    tab = page  # type: ignore[assignment]
    denied = httpx.get(f"{server.url}/ui/", timeout=5)
    assert denied.status_code == 401  # pages need the read scope when tokens are on
    tab.goto(f"{server.url}/ui/?token={VIEWER}")  # sets the session cookie
    assert tab.locator("#models tbody tr").count() == 1
    assert "prod→1.0.0" in tab.inner_text("#models")
    tab.fill("header input[name=q]", "zzz")
    tab.press("header input[name=q]", "Enter")
    assert "No models match" in tab.inner_text("main")
    tab.goto(f"{server.url}/ui/?tag=vision")
    tab.click("text=digits")
    assert tab.locator("#versions tbody tr").count() == 2
    assert "signed" in tab.inner_text("#versions")

    tab.click("#versions >> text=1.0.0")
    text = tab.inner_text("main")
    assert "signed by me" in text and "Handwritten digit" in text
    assert tab.locator(".card h1, .card h2").count() >= 1  # the model card, rendered
    assert "x" in tab.inner_text("#signature") and "[-1, 1, 8, 8]" in tab.inner_text("#signature")
    assert tab.locator("svg.lineage rect").count() == 2  # 1.0.0 and its int8 child
    shot = tmp_path / "version.png"
    tab.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1200 and height > 900  # the whole page, card included

    href = tab.get_attribute("#download", "href")
    download = httpx.get(f"{server.url}{href}?token={VIEWER}", timeout=10)
    assert download.status_code == 200
    (tmp_path / "got.crate").write_bytes(download.content)
    assert mc.Crate.open(tmp_path / "got.crate").digest == ui[1].resolve("digits@1.0.0").digest

    tab.goto(f"{server.url}/ui/models/digits")
    tab.select_option("#compare select[name=b]", "1.0.0-int8")
    tab.click("#compare button")
    comparison = tab.inner_text("#comparison")
    assert "report: size_ratio" in comparison and "1.0.0-int8" in comparison


def test_try_it_with_json_and_with_an_image(
    ui: tuple[Server, mc.Registry], page: object, digits: Digits, tmp_path: Path
) -> None:
    server, registry = ui
    tab = page  # type: ignore[assignment]
    model = mc.load("digits@1.0.0", registry=registry)
    tab.goto(f"{server.url}/ui/models/digits/1.0.0?token={VIEWER}")
    tab.click("#try-form button")  # the crate's first sample input, prefilled
    tab.wait_for_selector("#try-result table.top")
    sample = model.samples()["x"][:1]  # type: ignore[index]
    expected = str(int(np.argmax(model.predict(sample)["output"])))
    assert tab.inner_text("#try-result table.top tr:first-child td:first-child") == expected
    tab.screenshot(path=str(tmp_path / "try.png"))

    pixels = np.round(digits.x_test[7, 0] * 255)
    image = tmp_path / "digit.png"
    image.write_bytes(png(pixels))
    tab.set_input_files("#try-image", str(image))
    expect(tab.locator("#try-input")).to_have_value(re.compile(r"^\[\[\[\["))
    tab.click("#try-form button")
    tab.wait_for_selector("#try-result h3")
    expect(tab.locator("#try-result")).not_to_contain_text("running")
    x = (pixels / 255).round(4).astype(np.float32)[None, None]
    expected = str(int(np.argmax(model.predict(x)["output"])))
    assert tab.inner_text("#try-result table.top tr:first-child td:first-child") == expected

    tab.fill("#try-input", "[[1, 2]]")
    tab.click("#try-form button")
    tab.wait_for_selector("#try-result .error")
    assert "expected shape" in tab.inner_text("#try-result .error")


def test_admin_alias_moves_need_an_admin_token(
    ui: tuple[Server, mc.Registry], page: object
) -> None:
    server, registry = ui
    tab = page  # type: ignore[assignment]
    tab.goto(f"{server.url}/ui/models/digits?token={VIEWER}")
    tab.fill("#admin input[name=alias]", "prod")
    tab.select_option("#admin select[name=version]", "1.0.0-int8")
    tab.fill("#admin input[name=token]", VIEWER)
    tab.click("#admin button[data-action=set]")
    expect(tab.locator("#admin-result")).not_to_be_empty()
    assert "lacks the 'admin' scope" in tab.inner_text("#admin-result")
    assert registry.resolve("digits@prod").version == "1.0.0"

    tab.fill("#admin input[name=token]", ADMIN)
    tab.click("#admin button[data-action=set]")
    expect(tab.locator("#admin-result")).to_contain_text("→")
    assert registry.resolve("digits@prod").version == "1.0.0-int8"
    tab.wait_for_load_state("load")
    tab.goto(f"{server.url}/ui/models/digits")
    tab.fill("#admin input[name=alias]", "prod")
    tab.fill("#admin input[name=token]", ADMIN)
    tab.click("#admin button[data-action=rollback]")
    expect(tab.locator("#admin-result")).to_contain_text("→")
    assert registry.resolve("digits@prod").version == "1.0.0"
    moves = [e for e in registry.audit() if e.action.startswith("alias")]
    assert [(e.action, e.actor) for e in moves[-2:]] == [
        ("alias-set", "token:ops"),
        ("alias-rollback", "token:ops"),
    ]


def test_model_page_plots_each_metric_across_versions(
    ui: tuple[Server, mc.Registry], digits: Digits
) -> None:
    server, registry = ui
    data = {"x": digits.x_test[:200], "y": digits.y_test[:200]}
    for ref in ("digits@1.0.0", "digits@1.0.0-int8", "digits@1.0.0"):
        mc.evaluate(ref, data, registry=registry)
    page = httpx.get(f"{server.url}/ui/models/digits?token={VIEWER}", timeout=10)
    assert page.status_code == 200
    charts = re.findall(r'<svg class="chart"[^>]*aria-label="([^"]+)"(.*?)</svg>', page.text)
    labels = [label for label, _ in charts]
    assert labels == [
        "accuracy over time",
        "latency_ms_p50 over time",
        "latency_ms_p99 over time",
        "throughput_batch32 over time",
    ]
    accuracy = charts[0][1]
    assert accuracy.count("<circle") == 3  # one point per evaluation, in time order
    titles = re.findall(r"<title>([^<]+)</title>", accuracy)
    assert [t.split(" · ")[0] for t in titles] == ["1.0.0", "1.0.0-int8", "1.0.0"]
    assert "evaluation-history" in page.text
    assert "http" not in page.text.split('<div id="evaluations">')[1].split("</div>")[0].replace(
        "http://www.w3.org/2000/svg", ""
    )  # nothing loaded from elsewhere
