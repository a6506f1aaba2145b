"""Real services the bridge tests and benchmarks start, never mocks: the MQTT broker is Debian's
mosquitto on a free loopback port (:mod:`proad.edge.bridges.broker`), the browser Debian's headless
Chromium driven by Selenium through Debian's ChromeDriver."""

from pathlib import Path

from proad.edge.bridges.broker import MOSQUITTO, Mosquitto
from proad.edge.ports import free_port

__all__ = ["CHROMEDRIVER", "CHROMIUM", "MOSQUITTO", "Mosquitto", "chromium", "free_port"]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def chromium(tmp: Path):  # -> selenium.webdriver.Chrome
    """Headless Chromium, without the background networking that this closed network refuses."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--window-size=1280,900",
                f"--user-data-dir={tmp / 'chromium-profile'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
