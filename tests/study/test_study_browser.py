"""report.html in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium - no console errors, every seed section and plot
rendered, a screenshot saved (``study-report.png`` next to the report, and
``$VTDSIM_SCREENSHOT`` when set).

Set-up: ``make test`` installs Selenium (the ``test`` extra); this test runs
``apt-get install chromium chromium-driver`` itself when it runs as root and they are missing,
and skips with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import THREADS

PACKAGES = ("chromium", "chromium-driver")


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing them when root; skip otherwise."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium/chromium-driver missing and not root: apt-get install "
                    + " ".join(PACKAGES))
    done = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True,
                          text=True, timeout=900)
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip(f"apt-get install {' '.join(PACKAGES)} failed: "
                    f"{done.stderr.strip().splitlines()[-1:]}")
    return found


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium not installed (the test extra)")
    chromium, chromedriver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=chromedriver)
    browser = webdriver.Chrome(options=options, service=service)
    yield browser
    browser.quit()


def test_report_renders_in_chromium(study_out, driver):
    from selenium.webdriver.common.by import By

    driver.get((study_out / "report.html").as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    for number in THREADS:
        section = driver.find_element(By.ID, f"seed-{number}")
        assert section.is_displayed()
        svg = section.find_element(By.CSS_SELECTOR, "figure.plot svg")
        size = svg.size
        assert size["width"] > 100 and size["height"] > 50, (number, size)
        assert section.find_elements(By.CSS_SELECTOR, "table.verdicts tr")
    links = driver.find_elements(By.CSS_SELECTOR, "#toc a")
    assert len(links) == len(THREADS) + 2
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(height, 16000))
    shot = study_out / "study-report.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("VTDSIM_SCREENSHOT"):
        shutil.copy(shot, os.environ["VTDSIM_SCREENSHOT"])
