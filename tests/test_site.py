"""The course as a website (course_utils.site; README "Read online").

Fast tests: the landing page comes from the README, the staged sources, the one-line errors. Slow tests build
the site with the command a reader runs and open it in headless Chromium from the OS packages (.ci/site-deps.sh
installs it; the browser tests skip, with the reason, where it is missing). They serve the site on 127.0.0.1
and send every other host to "not found", so they also prove that the pages work offline.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from course_utils import cli, settings, site

NOTEBOOKS = [p.stem for p in site.notebook_paths()]
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


# ---------------------------------------------------------------- fast: sources and errors


def test_without_the_extra_the_command_prints_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sphinx", None)  # `import sphinx` now raises ImportError
    out = tmp_path / "out"
    assert cli.main(["site", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ['error: the site needs the optional extra: pip install -e ".[site]"']
    assert captured.out == "" and not out.exists()


def test_landing_page_is_the_readme_introduction():
    readme = (settings.REPO_ROOT / "README.md").read_text()
    page = site.index_page(readme, [f"notebooks/{n}.ipynb" for n in NOTEBOOKS])
    intro = readme.split("\n## ")[0].strip()
    assert page.startswith(intro)  # the title and the introduction, as written
    assert "## The notebooks" in page and "](notebooks/04_freezing.ipynb)" in page
    assert "## Start" not in page and "### Quick and full mode" not in page and "## Command line" not in page
    toc = page.split(":caption: Notebooks")[1].split("```")[0].split()
    assert toc == [f"notebooks/{n}" for n in NOTEBOOKS] and len(toc) == 10
    assert "docs/findings\ndocs/architecture" in page


def test_readme_intro_takes_the_named_sections_only():
    readme = "# T\n\nIntro.\n\n## Start\n\nrun\n\n## The notebooks\n\ntable\n\n### Sub\n\nno\n\n## End\n\nno\n"
    assert site.readme_intro(readme) == "# T\n\nIntro.\n\n## The notebooks\n\ntable\n"


def test_links_to_pages_stay_and_other_files_go_to_the_repository():
    pages = {"notebooks/04_freezing.ipynb", "docs/findings.md"}
    text = ("[a](notebooks/04_freezing.ipynb) [b](docs/findings.md#speed) [c](course_utils/site.py) "
            "[d](https://example.org/x) [e](#here)")
    assert site.rewrite_links(text, "README.md", pages, "https://github.com/o/r") == (
        "[a](notebooks/04_freezing.ipynb) [b](docs/findings.md#speed) "
        "[c](https://github.com/o/r/blob/main/course_utils/site.py) [d](https://example.org/x) [e](#here)")
    assert site.rewrite_links("[n](../notebooks/04_freezing.ipynb)", "docs/findings.md", pages, "R") == \
        "[n](../notebooks/04_freezing.ipynb)"


def test_staged_notebooks_keep_their_outputs_and_lose_the_web_badge(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_REPO_URL", "https://github.com/someone/fork")
    staged = site.stage_sources(tmp_path)
    assert staged == ["index.md", *[f"notebooks/{n}.ipynb" for n in NOTEBOOKS], *site.DOCS]
    for name in NOTEBOOKS:
        original = json.loads((settings.REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())
        copy = json.loads((tmp_path / "notebooks" / f"{name}.ipynb").read_text())
        assert [c.get("outputs") for c in copy["cells"]] == [c.get("outputs") for c in original["cells"]]
        markdown = "".join(c["source"] for c in copy["cells"] if c["cell_type"] == "markdown")
        assert "colab-badge.svg" not in markdown
        assert f"(https://colab.research.google.com/github/someone/fork/blob/main/notebooks/{name}.ipynb)" in markdown
    options = site.sphinx_config()["html_theme_options"]
    assert options["repository_url"] == "https://github.com/someone/fork" and options["launch_buttons"]["colab_url"]
    assert site.sphinx_config()["nb_execution_mode"] == "off"
    findings = (tmp_path / "docs" / "findings.md").read_text()
    assert "](findings_curves.png)" in findings  # a figure of the docs stays a relative link, staged beside it
    assert (tmp_path / "docs" / "findings_curves.png").read_bytes() == (
        settings.REPO_ROOT / "docs" / "findings_curves.png").read_bytes()


# ---------------------------------------------------------------- slow: build, serve, open in Chromium


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The site, built once with the reader's command (``python -m course_utils site OUT``)."""
    missing = [m for m in site.SITE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the site extra is not installed ({', '.join(missing)}): pip install -e \".[site]\"")
    out = tmp_path_factory.mktemp("site") / "out"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "course_utils", "site", str(out)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\nsite built in {time.perf_counter() - start:.1f} s: {result.stdout.strip()}")
    return out


@pytest.fixture(scope="module")
def server(built_site):
    """The built site over HTTP on 127.0.0.1, as a pages service would serve it."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(built_site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the OS packages through the OS chromedriver; nothing is downloaded."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: .ci/site-deps.sh")
    binary = next((b for b in BROWSERS if Path(b).exists()), None)
    driver_path = next((d for d in DRIVERS if Path(d).exists()), shutil.which("chromedriver"))
    if binary is None or driver_path is None:
        pytest.skip("Chromium or chromedriver not found (apt-get install chromium chromium-driver; "
                    ".ci/site-deps.sh does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, "return document.readyState === 'complete'")


def _wait(driver, script: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def _output_figures(name: str) -> int:
    """How many images the committed notebook's outputs hold."""
    nb = json.loads((settings.REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())
    return sum(1 for c in nb["cells"] for o in c.get("outputs", [])
               if {"image/png", "image/jpeg", "image/svg+xml"} & set(o.get("data", {})))


@pytest.mark.slow
def test_build_writes_a_landing_page_and_one_page_per_notebook(built_site):
    assert (built_site / "index.html").is_file() and (built_site / "search.html").is_file()
    assert sorted(p.stem for p in (built_site / "notebooks").glob("*.html")) == NOTEBOOKS
    assert (built_site / "docs" / "findings.html").is_file() and (built_site / "docs" / "architecture.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_page_loads_with_its_figures(browser, server, name):
    _open(browser, f"{server}notebooks/{name}.html")
    assert browser.execute_script("return document.querySelector('article h1').textContent").startswith(name[:2])
    _wait(browser, "return [...document.images].every(i => i.complete)")
    images = browser.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert images and all(width > 0 for _, width in images), [src for src, width in images if width == 0]
    figures = browser.execute_script("return document.querySelectorAll('.cell_output img').length")
    assert figures == _output_figures(name)
    colab = browser.execute_script("return [...document.querySelectorAll('a')].map(a => a.href)"
                                   ".filter(h => h.startsWith('https://colab.research.google.com/github/'))")
    assert f"{settings.repo_url().split('github.com/')[-1]}/blob/main/notebooks/{name}.ipynb" in " ".join(colab)
    assert browser.execute_script("return document.querySelectorAll('.cell_input button.copybtn').length") > 0


@pytest.mark.slow
def test_navigation_reaches_all_ten_notebooks(browser, server):
    _open(browser, server)
    sidebar = browser.execute_script("return [...document.querySelectorAll('nav.bd-docs-nav a')].map(a => a.href)")
    assert [f"{server}notebooks/{n}.html" for n in NOTEBOOKS] == [h for h in sidebar if "/notebooks/" in h]
    visited = []
    for _ in range(len(NOTEBOOKS) + 1):  # "next" from the landing page through all the notebooks
        browser.find_element("css selector", "a.right-next").click()
        _wait(browser, "return document.readyState === 'complete'")
        visited.append(browser.current_url.removeprefix(server))
    assert visited == [f"notebooks/{n}.html" for n in NOTEBOOKS] + ["docs/findings.html"]
    browser.find_element("css selector", "a.left-prev").click()
    _wait(browser, "return document.readyState === 'complete'")
    assert browser.current_url == f"{server}notebooks/{NOTEBOOKS[-1]}.html"


class _Links(HTMLParser):
    """Every href and src of a page."""

    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.targets += [value for key, value in attrs if key in ("href", "src") and value]


@pytest.mark.slow
def test_no_internal_link_returns_a_missing_file(built_site, server):
    checked: dict[str, int] = {}
    broken = []
    pages = [p for p in sorted(built_site.rglob("*.html")) if "_static" not in p.parts]  # not theme templates
    for page in pages:
        url = server + page.relative_to(built_site).as_posix()
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for target in parser.targets:
            absolute = urllib.parse.urljoin(url, target).split("#")[0].split("?")[0]
            if not absolute.startswith(server):
                continue
            if absolute not in checked:
                try:
                    checked[absolute] = urllib.request.urlopen(urllib.request.Request(absolute, method="HEAD")).status
                except urllib.error.HTTPError as err:
                    checked[absolute] = err.code
            if checked[absolute] != 200:
                broken.append(f"{page.relative_to(built_site)} -> {target} ({checked[absolute]})")
    assert len(checked) > 50 and not broken, broken


@pytest.mark.slow
def test_search_finds_batchnorm(browser, server):
    _open(browser, f"{server}search.html?q=BatchNorm")
    _wait(browser, "return document.querySelectorAll('#search-results ul.search li').length > 0", timeout=60)
    hits = browser.execute_script("return [...document.querySelectorAll('#search-results ul.search li a')]"
                                  ".map(a => a.href)")
    assert any("notebooks/04_freezing.html" in h for h in hits), hits


@pytest.mark.slow
def test_screenshots_of_the_landing_page_and_notebook_04(browser, server, tmp_path):
    shots = {"landing.png": (server, None), "04_freezing.png": (f"{server}notebooks/04_freezing.html", None),
             "04_freezing_figure.png": (f"{server}notebooks/04_freezing.html", ".cell_output img")}
    for filename, (url, scroll_to) in shots.items():
        _open(browser, url)
        _wait(browser, "return [...document.images].every(i => i.complete)")
        if scroll_to:  # the first figure, with the code cell that drew it above
            browser.execute_script(f"document.querySelector('{scroll_to}').scrollIntoView({{block: 'end'}})")
        assert browser.save_screenshot(str(tmp_path / filename))
        assert (tmp_path / filename).stat().st_size > 10_000
    print(f"\nscreenshots for a person to look at: {tmp_path}")
