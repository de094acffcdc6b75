"""The dissection report as a person sees it: index.html opened in headless Chromium.

Checks that every image loaded (none broken), that nothing was reported on the console or as
a page error, and that the page fits a laptop screen's width (1366 px: no horizontal scroll);
saves a screenshot beside the report for a person to look at. Needs Debian's `chromium`
(`.ci/run` installs it when missing); skipped with that reason only where it is absent.
"""

import json
import re
import shutil
import subprocess

import pytest

from test_protocol import report  # noqa: F401  (the small report of three tiny runs)

LAPTOP = (1366, 768)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected first in <head> of a copy of the page: records errors (capture phase, so an <img>
# that fails to load is seen too) and console.error calls, then, once everything has loaded,
# writes what it found into the page for --dump-dom to print.
PROBE = """<script>
window.__problems = [];
window.addEventListener("error", e => window.__problems.push(
  e.message || ("failed to load " + String(e.target.src || e.target.href || "").slice(0, 80))),
  true);
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => { window.__problems.push(level + ": " + args.join(" "));
                                  original.apply(console, args); };
}
window.addEventListener("load", () => {
  const images = [...document.images];
  const found = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0))
                  .map(i => i.alt || i.src.slice(0, 60)),
    problems: window.__problems,
    scroll_width: document.documentElement.scrollWidth,
    viewport_width: window.innerWidth,
    widest: Math.max(0, ...[...document.querySelectorAll("body *")].map(
      e => e.getBoundingClientRect().right)),
  };
  const pre = document.createElement("pre");
  pre.id = "__probe";
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_report_in_a_real_browser(report, tmp_path):  # noqa: F811
    index = report / "index.html"
    html = index.read_text()
    assert "<head>" in html
    probe_page = report / "_probe.html"  # beside index.html: relative paths resolve alike
    probe_page.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    try:
        done = chromium("--dump-dom", probe_page.as_uri())
    finally:
        probe_page.unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout, re.S)
    assert match, "the page did not finish loading"
    found = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert found["images"] >= 3, found  # Set IoU, CKA and Grad-CAM figures at least
    assert found["broken"] == [], found
    assert found["problems"] == [], found
    assert found["viewport_width"] == LAPTOP[0]
    assert found["scroll_width"] <= LAPTOP[0], f"wider than a laptop screen: {found}"

    shot = report / "screenshot.png"
    done = chromium(f"--screenshot={shot}", index.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot)
    assert image.size == LAPTOP
    import numpy as np

    assert len(np.unique(np.asarray(image.convert("L")))) > 16  # something was drawn
