"""The mask explorer in a real browser: JupyterLab on 127.0.0.1 driven through Debian's Chromium
with Selenium, as a user would (open masks.ipynb, Run All, switch run, layer and epoch).

Debian's ``chromium`` and ``chromium-driver`` are installed when missing (root or passwordless
sudo); the test skips, saying why, only when they cannot be installed. Screenshots go to the
test's temporary directory (printed)."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.slow


def install_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver where missing; the reason when impossible."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install Debian's chromium and chromium-driver"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        return "chromium is missing and this user is not root and has no sudo to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(prefix + command, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return (f"could not install chromium: {' '.join(prefix + command)} failed: "
                    f"{(done.stderr or done.stdout).strip()[-500:]}")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return f"chromium installed but {CHROMIUM} or {CHROMEDRIVER} is missing"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny real training runs of different architectures: one of a study
    (<root>/browser/<run>/) and one single run (<root>/<name>/), 2 snapshot epochs each."""
    from maxq.config import TrainConfig
    from maxq.train import train

    root = tmp_path_factory.mktemp("lab-runs")
    common = dict(set="FashionMNIST", conv_bn_type="SoftMaxQConv2DBN", N=2, M=4, image_size=16,
                  train_subset=32, val_subset=32, batch_size=32, epochs=2, increase_start=0,
                  increase_end=1, progress=False)
    train(TrainConfig(arch="resnet18", save_dir=str(root / "browser" / "resnet18-run"),
                      study="browser", row="resnet18-run", **common))
    train(TrainConfig(arch="mobilenet_v1", save_dir=str(root / "mobilenet-demo"), **common))
    return root


@pytest.fixture(scope="module")
def lab(two_runs, tmp_path_factory):
    """JupyterLab on 127.0.0.1 (token) serving a copy of notebooks/ (so autosave cannot touch
    the repository's notebooks); kernels find the runs through MAXQ_RUNS_ROOT."""
    base = tmp_path_factory.mktemp("lab")
    (base / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "masks.ipynb", base / "notebooks" / "masks.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, MAXQ_RUNS_ROOT=str(two_runs), JUPYTERLAB_WORKSPACES_DIR=str(base / "ws"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTER_RUNTIME_DIR=str(base / "rt"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log = open(base / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={base}", "--allow-root"],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(base / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, token, base
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    reason = install_chromium()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")           # no Selenium Manager downloads
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_mask_explorer_in_jupyterlab(lab, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, token, base = lab
    driver = browser
    start = time.monotonic()
    shots = []

    class wait:                                     # WebDriverWait that says what it waited for
        @staticmethod
        def until(condition, what="the page"):
            try:
                return WebDriverWait(driver, 240, poll_frequency=0.3,
                                     ignored_exceptions=(StaleElementReferenceException,)
                                     ).until(condition)
            except Exception:
                shot("timeout")
                pytest.fail(f"timed out waiting for {what}; title {title()!r}; status bar "
                            f"{read('#jp-main-statusbar')!r}; outputs "
                            f"{[t[:300] for t in outputs()]}; screenshots {shots}")

    def shot(name):
        path = tmp_path / f"{len(shots) + 1:02d}-{name}.png"
        driver.save_screenshot(str(path))
        shots.append(path)

    def css(selector):
        return driver.find_elements(By.CSS_SELECTOR, selector)

    # read in one script call each: the widgets re-render, so an element found in one call may
    # be stale by the next
    def read(selector, what="innerText"):
        return driver.execute_script(
            f"const e = document.querySelector({selector!r}); return e ? e.{what} : '';") or ""

    def outputs(selector=".jp-OutputArea-output"):
        return driver.execute_script(
            f"return Array.from(document.querySelectorAll({selector!r}), e => e.innerText);")

    def options(selector):
        return driver.execute_script(
            f"return Array.from(document.querySelectorAll({selector!r} + ' option'), "
            "e => e.textContent.trim());")

    def choose(selector, text):             # a user's pick; retried if the widget re-rendered
        for _ in range(20):
            try:
                return Select(css(selector)[0]).select_by_visible_text(text)
            except StaleElementReferenceException:
                time.sleep(0.3)
        raise AssertionError(f"{selector} kept re-rendering")

    def title():
        return read(".maxq-title").strip()

    def figure_src():
        return read(".maxq-figure img", "src")

    def kernel_idle(_=None):
        return "Idle" in read("#jp-main-statusbar")

    def errors():
        bad = outputs(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        bad += [t for t in outputs() if "Traceback" in t or "Error" in t]
        return [t[:500] for t in bad]

    driver.get(f"{url}/lab/tree/notebooks/masks.ipynb?token={token}")
    wait.until(lambda d: css(".jp-NotebookPanel .jp-Cell") and kernel_idle(), "notebook open, kernel idle")
    time.sleep(1.0)
    current = css(".lm-TabBar-tab.lm-mod-current")
    assert current and "jp-mod-dirty" not in current[0].get_attribute("class"), \
        "masks.ipynb opens marked as modified"
    shot("opened")

    # Run All through the menu, as a user does
    driver.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel')][text()='Run']").click()
    wait.until(lambda d: d.find_elements(
        By.XPATH, "//div[contains(@class,'lm-Menu-itemLabel')][text()='Run All Cells']"),
        "the Run menu")
    driver.find_element(By.XPATH,
                        "//div[contains(@class,'lm-Menu-itemLabel')][text()='Run All Cells']").click()
    wait.until(lambda d: " · epoch " in title() and figure_src(), "the explorer's figure")
    wait.until(lambda d: len(css(".jp-Cell .jp-OutputArea-output img")) >= 4 and kernel_idle(),
               "Run All to finish (4 figures)")
    shot("run-all")
    assert not errors(), errors()
    first_title, first_src = title(), figure_src()
    assert first_title.endswith("epoch 1"), first_title          # the last snapshot epoch

    # switch to the run of the other architecture: its layers, the same epoch
    current_run = read(".maxq-run select", "selectedOptions[0].textContent").strip()
    runs = options(".maxq-run select")
    assert current_run in runs and len(runs) == 2, (current_run, runs)
    other = next(o for o in runs if o != current_run)
    choose(".maxq-run select", other)
    wait.until(lambda d: title().startswith(other) and figure_src() != first_src, "the other run")
    shot("other-run")
    layers = options(".maxq-layer select")
    assert title() == f"{other} · {layers[0]} · epoch 1", title()
    assert ("features." in layers[0]) != ("features." in first_title), (first_title, layers)
    assert not errors(), errors()

    # another layer, then another epoch
    choose(".maxq-layer select", layers[2])
    wait.until(lambda d: title() == f"{other} · {layers[2]} · epoch 1" and figure_src(),
               "the other layer")
    shot("layer")
    choose(".maxq-epoch select", "0")
    wait.until(lambda d: title() == f"{other} · {layers[2]} · epoch 0" and figure_src(),
               "epoch 0")
    wait.until(kernel_idle, "the kernel to be idle")
    shot("epoch")
    assert title() != first_title
    assert not errors(), errors()
    print(f"browser test: {time.monotonic() - start:.0f} s in the browser; screenshots: "
          + ", ".join(map(str, shots)))
