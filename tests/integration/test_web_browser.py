# SPDX-License-Identifier: AGPL-3.0-or-later
"""The node's web page in a real browser (issue 20): Debian's headless Chromium driven by
chromedriver through python3-selenium, against a real `reflow-ingest serve` whose store a real
agent filled (test_web.ServedNodeTestCase). One browser session: log in through the form, follow
Devices → Events → an event → its resource's passport (an SVG drawn by Graphviz), log out. A
PNG screenshot of each page (1280×800) goes to $REFLOW_TEST_OUTPUT (set by CMake; a temporary
directory otherwise), and the test prints where."""

import os
import pathlib
import shutil
import sys
import tempfile
import unittest

import test_web as tw

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # python3-selenium is not installed
    webdriver = None

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@unittest.skipUnless(webdriver and CHROMIUM and CHROMEDRIVER,
                     "no chromium: needs Debian's chromium, chromium-driver and python3-selenium")
class BrowserTest(tw.ServedNodeTestCase):
    def setUp(self):
        super().setUp()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        # --no-sandbox: the tests may run as root (CI containers), where Chromium's sandbox
        # refuses to start.
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,800"):
            options.add_argument(arg)
        service = Service(executable_path=CHROMEDRIVER,
                          log_path=str(self.tmp / "chromedriver.log"))
        self.browser = webdriver.Chrome(options=options, service=service)
        self.addCleanup(self.browser.quit)
        self.browser.set_page_load_timeout(60)
        out = os.environ.get("REFLOW_TEST_OUTPUT")
        self.out = pathlib.Path(out) if out else pathlib.Path(
            tempfile.mkdtemp(prefix="reflow-web-screenshots-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.shots = []

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def shot(self, name):
        path = self.out / f"{len(self.shots) + 1:02d}-{name}.png"
        self.assertTrue(self.browser.save_screenshot(str(path)), path)
        self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n", path)
        self.shots.append(path)

    def test_login_then_devices_events_event_passport_and_logout(self):
        b = self.browser
        b.get(self.url("/devices"))
        self.assertEqual(b.title, "Log in · reflow node")  # the form, not the page
        self.shot("login")
        b.find_element(By.NAME, "user").send_keys(tw.USER)
        b.find_element(By.NAME, "password").send_keys(tw.PASSWORD)
        b.find_element(By.CSS_SELECTOR, "main form button").click()

        self.assertEqual(b.title, "Devices · reflow node")
        self.assertEqual(b.current_url, self.url("/devices"))
        self.shot("devices")
        b.find_element(By.LINK_TEXT, "dev-w").click()

        self.assertEqual(b.title, "Events · reflow node")
        self.assertIn("device=dev-w", b.current_url)
        self.shot("events")
        b.find_element(By.LINK_TEXT, "2").click()  # seq 2: a consume of the spool

        self.assertEqual(b.title, "Event · reflow node")
        self.shot("event")
        b.find_element(By.LINK_TEXT, "spool:pla-black-01").click()

        self.assertEqual(b.title, "Material passport · reflow node")
        svg = b.find_element(By.CSS_SELECTOR, ".graph svg")
        self.assertGreater(svg.size["width"], 100)
        nodes = svg.find_elements(By.CSS_SELECTOR, "g.node")
        self.assertEqual(len(nodes), 1 + tw.EVENTS // 3)
        # The hostile note is text in the drawing, never an element of the page.
        self.assertEqual(b.find_elements(By.TAG_NAME, "script"), [])
        self.assertIn("<script>alert('x')</script>", svg.text)
        self.shot("passport")

        b.find_element(By.CSS_SELECTOR, "header form button").click()
        self.assertEqual(b.title, "Log in · reflow node")
        b.get(self.url("/devices"))
        self.assertEqual(b.title, "Log in · reflow node")  # the session is over
        print(f"\nscreenshots: {self.out}", file=sys.stderr)
        for path in self.shots:
            print(f"  {path}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
