"""The explorer and the reports in a real browser, as a newcomer meets them on a fresh clone:
JupyterLab started as `make lab` starts it, driven through Debian's Chromium with Selenium
(Run All on the committed sample runs, switch run, evolution view and its epoch slider, save),
and the HTML reports this checkout renders from runs trained here at tiny scale (a figure or a
table in every section, no code, no absolute paths).

Debian's ``chromium`` and ``chromium-driver`` are installed when missing (root or passwordless
sudo); the test skips, saying why, only when they cannot be installed. Screenshots go to the
test's temporary directory (printed)."""
from __future__ import annotations

import os
import re
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
pytestmark = pytest.mark.e2e


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
def clone(tmp_path_factory):
    """A fresh clone as a newcomer gets it: the repository's tracked and unignored files
    (committed sample runs included; no runs/ of one's own, no checkpoints)."""
    base = tmp_path_factory.mktemp("clone") / "maxq"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_symlink():                  # maxq/notebooks, maxq/studies: as git makes them
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(source), base / name)
        elif source.is_file():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, base / name)
    assert (base / "samples" / "sample").is_dir() and not list((base / "runs").glob("*/"))
    return base


def clone_env(clone: Path) -> dict[str, str]:
    """The environment of a user in the clone: its maxq, no $MAXQ_RUNS_ROOT / REPORTS_ROOT."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAXQ_RUNS_ROOT", "MAXQ_REPORTS_ROOT")}
    env["PYTHONPATH"] = str(clone)
    return env


@pytest.fixture(scope="module")
def lab(clone, tmp_path_factory):
    """JupyterLab started in the clone as `make lab` starts it (its jupyter_server_config.py:
    the explorer as the default page, the templates' pre-save hook), on a free port."""
    base = tmp_path_factory.mktemp("lab")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(clone_env(clone), JUPYTERLAB_WORKSPACES_DIR=str(base / "ws"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTER_RUNTIME_DIR=str(base / "rt"))
    log = open(base / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab",
         f"--config={clone / 'jupyter' / 'jupyter_server_config.py'}", "--no-browser",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", "--allow-root"],
        cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
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


#: the current tab of the main area (the side bars have current tabs too)
MAIN_TAB = "#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current"


class Page:
    """A user's view of the browser page: waits that say what they waited for, reads done in
    one script call each (the widgets re-render, so an element found in one call may be stale
    by the next), screenshots in the test's temporary directory."""

    def __init__(self, driver, folder: Path):
        self.driver, self.folder, self.shots = driver, folder, []

    def until(self, condition, what="the page"):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, 240, poll_frequency=0.3,
                                 ignored_exceptions=(StaleElementReferenceException,)
                                 ).until(condition)
        except Exception:
            self.shot("timeout")
            pytest.fail(f"timed out waiting for {what}; title {self.title()!r}; status bar "
                        f"{self.read('#jp-main-statusbar')!r}; outputs "
                        f"{[t[:300] for t in self.outputs()]}; screenshots {self.shots}")

    def shot(self, name):
        path = self.folder / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)

    def css(self, selector):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def read(self, selector, what="innerText"):
        return self.driver.execute_script(
            f"const e = document.querySelector({selector!r}); return e ? e.{what} : '';") or ""

    def outputs(self, selector=".jp-OutputArea-output"):
        return self.driver.execute_script(
            f"return Array.from(document.querySelectorAll({selector!r}), e => e.innerText);")

    def options(self, selector):              # as shown: ipywidgets writes spaces as U+00A0
        return self.driver.execute_script(
            f"return Array.from(document.querySelectorAll({selector!r} + ' option'), "
            "e => e.textContent.replace(/\\u00a0/g, ' ').trim());")

    def choose(self, selector, text):        # a user's pick; retried if the widget re-rendered
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import Select

        for _ in range(20):
            try:
                return Select(self.css(selector)[0]).select_by_visible_text(text)
            except StaleElementReferenceException:
                time.sleep(0.3)
        raise AssertionError(f"{selector} kept re-rendering")

    def title(self):
        return self.read(".maxq-title").strip()

    def figure_src(self):
        return self.read(".maxq-figure img", "src")

    def kernel_idle(self, _=None):
        return "Idle" in self.read("#jp-main-statusbar")

    def errors(self):
        bad = self.outputs(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        bad += [t for t in self.outputs() if "Traceback" in t or "Error" in t]
        return [t[:500] for t in bad]

    def menu(self, top, item):
        from selenium.webdriver.common.by import By

        self.driver.find_element(
            By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel')][text()='{top}']").click()
        path = f"//div[contains(@class,'lm-Menu-itemLabel')][text()='{item}']"
        self.until(lambda d: d.find_elements(By.XPATH, path), f"the {top} menu")
        self.driver.find_element(By.XPATH, path).click()

    def dirty(self):
        current = self.css(MAIN_TAB)
        return bool(current) and "jp-mod-dirty" in current[0].get_attribute("class")


def test_mask_explorer_on_a_fresh_clone(clone, lab, browser, tmp_path):
    """`make lab` on a fresh clone: the server's page is the explorer; Run All shows the
    committed sample runs' masks; switching the run, the evolution view and its epoch slider
    redraw; saving leaves the template byte for byte as committed (git stays clean)."""
    from selenium.webdriver.common.keys import Keys

    url, token, base = lab
    driver = browser
    page = Page(driver, tmp_path)
    start = time.monotonic()
    template = (clone / "notebooks" / "masks.ipynb").read_bytes()
    assert "/lab/tree/notebooks/masks.ipynb?token=" in (base / "lab.log").read_text()

    driver.get(f"{url}/?token={token}")              # the printed URL's server: the default page
    page.until(lambda d: page.css(".jp-NotebookPanel .jp-Cell") and page.kernel_idle(),
               "the explorer notebook to open, kernel idle")
    assert "/lab/tree/notebooks/masks.ipynb" in driver.current_url, driver.current_url
    assert page.read(f"{MAIN_TAB} .lm-TabBar-tabLabel").strip() == "masks.ipynb"
    time.sleep(1.0)
    assert not page.dirty(), "masks.ipynb opens marked as modified"
    page.shot("opened")

    page.menu("Run", "Run All Cells")                 # Run All through the menu, as a user does
    page.until(lambda d: " · epoch " in page.title() and page.figure_src(), "the explorer's figure")
    page.until(lambda d: len(page.css(".jp-Cell .jp-OutputArea-output img")) >= 4 and
               page.kernel_idle(), "Run All to finish (4 figures)")
    page.shot("run-all")
    assert not page.errors(), page.errors()
    assert "committed sample runs" in page.read(".maxq-found")
    runs = page.options(".maxq-run select")
    first_title, first_src = page.title(), page.figure_src()
    assert len(runs) >= 3 and all(r.startswith("sample/") for r in runs), runs
    assert first_title.startswith(runs[0]) and first_title.endswith("epoch 5"), first_title
    zoom = page.read(".maxq-zoom select", "selectedOptions[0].textContent")
    assert zoom.replace("\xa0", " ").strip() == "16 rows × 8 blocks", zoom

    # switch the run: the same layer and epoch of the other method
    other = next(r for r in runs if "SRSTE" in r)
    page.choose(".maxq-run select", other)
    page.until(lambda d: page.title().startswith(other) and page.figure_src() != first_src,
               "the other run")
    page.shot("other-run")
    assert page.title().endswith("epoch 5") and not page.errors(), (page.title(), page.errors())

    # the evolution view of a MaxQ run, then its epoch slider moved back two epochs
    maxq = next(r for r in runs if "2of4-SoftMaxQ" in r)
    page.choose(".maxq-run select", maxq)
    page.until(lambda d: page.title().startswith(maxq), "the MaxQ run")
    driver.execute_script("Array.from(document.querySelectorAll('.maxq-view button'))"
                          ".find(b => b.innerText.trim() == 'evolution').click();")
    page.until(lambda d: page.title().endswith("epochs 0, 1, 2, 3, 4, 5"), "the evolution view")
    page.until(page.kernel_idle, "the kernel to be idle")
    evolution_src = page.figure_src()
    page.shot("evolution")
    def slide_left():                      # the slider's handle, by keyboard as a user can
        handle = page.css(".maxq-epoch .noUi-handle")[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); "
                              "arguments[0].focus();", handle)
        handle.send_keys(Keys.ARROW_LEFT)

    slide_left()
    page.until(lambda d: page.title().endswith("epochs 0, 1, 2, 3, 4"), "the slider at epoch 4")
    slide_left()
    page.until(lambda d: page.title().endswith("epochs 0, 1, 2, 3") and
               page.figure_src() != evolution_src, "the slider at epoch 3")
    page.until(page.kernel_idle, "the kernel to be idle")
    page.shot("slider")
    assert not page.errors(), page.errors()

    # save as a user does: the pre-save hook writes the template as committed
    page.menu("File", "Save Notebook")
    page.until(lambda d: not page.dirty(), "the notebook to be saved")
    saved = (clone / "notebooks" / "masks.ipynb").read_bytes()
    assert saved == template, "saving wrote the explorer's outputs into the tracked template"
    print(f"browser test: {time.monotonic() - start:.0f} s in the browser; screenshots: "
          + ", ".join(map(str, page.shots)))


BROWSER_STUDY = """
[study]
description = "Browser test: dense, MaxQ and SR-STE at 2:4, two seeds, one claim."
methods = ["SoftMaxQConv2DBN", "SoftSRSTEConv2dBN"]
seeds = [0, 1]
scale_note = "Test scale: the numbers mean nothing."

[defaults]
set = "FashionMNIST"
arch = "mobilenet_v1"
width_mult = 0.25
small_input = true
image_size = 16
train_subset = 32
val_subset = 32
batch_size = 32
epochs = 3
increase_start = 0
increase_end = 2
workers = 0
device = "cpu"
progress = false

[[rows]]
id = "dense"
method = "DenseConv2dBN"
N = 2
M = 4

[[rows]]
id = "2of4"
N = 2
M = 4

[[claims]]
claim = "MaxQ beats SR-STE at 2:4"
paper = "MaxQ above SR-STE"
row_a = "2of4"
method_a = "SoftMaxQConv2DBN"
row_b = "2of4"
method_b = "SoftSRSTEConv2dBN"
"""

#: every section (an h2, in a Markdown cell or in a cell's Markdown output: the report prints a
#: section's heading only when it has something to show) of a report page: its title, its text,
#: and how many figures and tables it shows up to the next section, in document order
SECTIONS_JS = """
const sections = [];
let current = {title: '(top)', figures: 0, tables: 0, text: ''};
sections.push(current);
const nodes = document.querySelectorAll(
  '.jp-Cell h2, .jp-OutputArea-output img, .jp-OutputArea-output table, .jp-OutputArea-output');
for (const node of nodes) {
  if (node.tagName === 'H2') {
    current = {title: node.innerText.replace('¶', '').trim(), figures: 0, tables: 0,
               text: (node.closest('.jp-RenderedMarkdown') || node).innerText};
    sections.push(current);
  } else if (node.tagName === 'IMG') { current.figures += 1; }
  else if (node.tagName === 'TABLE') { current.tables += 1; }
  else if (!node.querySelector('h2')) { current.text += node.innerText + ' '; }
}
return sections;
"""


def test_reports_show_a_figure_or_table_in_every_section(clone, browser, tmp_path):
    """Reports rendered by this checkout (`maxq batch` then `maxq report --rerun-root`) from
    runs trained here at tiny scale, opened in Chromium: a real title, no code cells, no
    absolute paths, the how-to-read caveat and the verdict legend before the first section,
    and a figure or a table in every section."""
    from selenium.webdriver.common.by import By

    (clone / "studies" / "browser.toml").write_text(BROWSER_STUDY, encoding="utf-8")
    env = clone_env(clone)
    for command in (["batch", "browser", "--jobs", "2", "--no-report", "--no-progress"],
                    ["report", "browser", "--rerun-root", "runs"]):
        done = subprocess.run([sys.executable, "-m", "maxq", *command], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    page = Page(browser, tmp_path)
    html = clone / "reports" / "browser" / "report.html"
    text = html.read_text(encoding="utf-8")
    for absolute in (str(clone), str(Path.home()), "/tmp/"):
        assert absolute not in text, f"{absolute} in {html}"
    browser.get(html.as_uri())
    page.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Cell"), "the report page")
    page.shot("report")
    assert browser.title == "MaxQ report: browser"
    code = browser.execute_script(
        "return document.querySelectorAll('.jp-CodeCell .jp-InputArea, .jp-InputPrompt').length;")
    assert code == 0, f"{code} code inputs or prompts on the page"
    sections = browser.execute_script(SECTIONS_JS)
    top = browser.execute_script(
        "const h = document.querySelector('.jp-MarkdownCell h2'); let t = '';"
        "for (const c of document.querySelectorAll('.jp-Cell')) {"
        "  if (h && c.contains(h)) break; t += c.innerText + ' '; } return t;")
    assert "How to read it" in top and "best-epoch" in top and "last-epoch" in top
    assert "within noise" in top and "ahead" in top          # the verdict legend
    titles = [s["title"] for s in sections[1:]]
    assert "Verdicts" in titles and "Mask evolution" in titles and "Ablation" in titles
    assert "Robustness across machines and thread counts" in titles and "Convergence" in titles
    masks = next(s for s in sections if s["title"] == "Mask evolution")
    assert "2of4-SoftMaxQConv2DBN-s0" in masks["text"], masks["text"][:500]   # not the dense row
    empty = [s["title"] for s in sections[1:] if not s["figures"] + s["tables"]]
    assert not empty, f"sections without a figure or table: {empty}; all: {sections}"
    # Markdown tables render as tables: as many <table> as the notebook's Markdown tables
    import nbformat

    executed = nbformat.read(str(html.with_suffix(".ipynb")), as_version=4)
    markdown_tables = sum(
        sum(1 for line in out.get("data", {}).get("text/markdown", "").splitlines()
            if line.startswith("|:") or line.startswith("|-"))
        for cell in executed.cells for out in cell.get("outputs", []))
    shown = browser.execute_script(
        "return document.querySelectorAll('.jp-RenderedMarkdown table').length;")
    assert shown == markdown_tables > 0, (shown, markdown_tables)
    print("report sections:", [{k: v for k, v in s.items() if k != "text"} for s in sections],
          "screenshots:", page.shots)


#: the first folders of absolute paths a report must not hold (a machine's checkout, home, temp)
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt|scratch)/")


def test_committed_reports_show_a_figure_or_table_in_every_section(clone, browser, tmp_path):
    """Every committed report as a newcomer opens it from a fresh clone, in Chromium: its title,
    no code cells, no absolute paths, the how-to-read caveat before the first section, and a
    figure or a table in every section."""
    from selenium.webdriver.common.by import By

    page = Page(browser, tmp_path)
    pages = sorted((clone / "reports").glob("*/report.html"))
    assert {p.parent.name for p in pages} >= {"claims", "claims-heldout", "claims-12ep", "benchmark",
                                              "benchmark-heldout", "cpu", "ablation", "ablation-12ep"}
    checked = {}
    for html in pages:
        study = html.parent.name
        browser.get(html.as_uri())
        page.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Cell"), f"report {study}")
        sections = browser.execute_script(SECTIONS_JS)
        code = browser.execute_script(
            "return document.querySelectorAll('.jp-CodeCell .jp-InputArea, .jp-InputPrompt')"
            ".length;")
        problems = []
        if browser.title != f"MaxQ report: {study}":
            problems.append(f"title {browser.title!r}")
        if code:
            problems.append(f"{code} code inputs or prompts")
        found = sorted(set(ABSOLUTE_PATH.findall(html.read_text(encoding="utf-8"))))
        if found:
            problems.append(f"absolute paths under {found}")
        top = browser.execute_script(
            "const h = document.querySelector('.jp-MarkdownCell h2'); let t = '';"
            "for (const c of document.querySelectorAll('.jp-Cell')) {"
            "  if (h && c.contains(h)) break; t += c.innerText + ' '; } return t;")
        if "How to read it" not in top or "within noise" not in top:
            problems.append("no how-to-read caveat and verdict legend at the top")
        empty = [s["title"] for s in sections[1:] if not s["figures"] + s["tables"]]
        if empty:
            problems.append(f"sections without a figure or table: {empty}")
        if len(sections) < 4:
            problems.append(f"only {len(sections) - 1} sections")
        checked[study] = problems
    page.shot("last-report")
    broken = {s: p for s, p in checked.items() if p}
    assert not broken, broken
    print("committed reports:", {s: p or "ok" for s, p in checked.items()})
