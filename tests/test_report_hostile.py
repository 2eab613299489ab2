"""The report as a security surface: a run folder from someone else, with script in every field a
manifest has, file names that are URLs, links out of the folder and a manifest of the wrong shape,
renders as text: one script (the page's own), no event handler, no link with a scheme, nothing
dropped; in headless Chromium no injected code runs."""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from interp.report.html import _SCRIPT, write_report

PAYLOAD = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
SCRIPT = "<script>document.body.setAttribute('data-pwned','2')</script>"


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def _hostile_folder(root):
    run = root / "run"
    run.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(run / "fig.png")
    (run / "javascript:alert(1)").write_text("a file named like a URL")
    (run / f"{PAYLOAD.replace('/', '_')}.txt").write_text("an unlisted file with markup in its name")
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("outside the run folder")
    os.symlink(root / "outside", run / "dir_out")
    os.symlink(root / "outside" / "secret.txt", run / "file_out")
    manifest = {
        "kind": PAYLOAD, "title": PAYLOAD, "section": '"><script>alert(1)</script>',
        "config": {"note": "</pre>" + SCRIPT, PAYLOAD: [1, 2]},
        "files": [{"path": "javascript:alert(1)", "role": "data", "caption": PAYLOAD},
                  {"path": "fig.png", "role": "figure", "caption": SCRIPT},
                  {"path": "../outside/secret.txt", "role": "data", "caption": ""},
                  {"path": "gone.png", "role": "figure", "caption": PAYLOAD}],
        "headline": [PAYLOAD, SCRIPT], "notes": [SCRIPT],
        "tables": [{"title": PAYLOAD, "columns": [PAYLOAD, "n"], "rows": [{PAYLOAD: SCRIPT, "n": 1.5}],
                    "formats": {"n": "{", PAYLOAD: ">999999999"}}],
        "claims": [{"claim": PAYLOAD, "verdict": SCRIPT, "measurement": "javascript:alert(1)"}],
    }  # fmt: skip
    (run / "run.json").write_text(json.dumps(manifest))
    probe = {"kind": "probe", "title": "probes", "section": "probes", "config": {"name": "javascript:alert(1)"},
             "files": [{"path": "javascript:alert(1)", "role": "table", "caption": "table"}]}  # fmt: skip
    (run / "javascript:alert(1).run.json").write_text(json.dumps(probe))
    (run / "bad.run.json").write_text(json.dumps({"kind": "x", "title": "t", "section": "s", "config": {},
                                                  "headline": 5}))  # fmt: skip
    return run


def test_a_hostile_run_folder_renders_as_text(tmp_path):
    run = _hostile_folder(tmp_path)
    page = write_report(run).read_text()
    tags = Tags()
    tags.feed(page)
    assert tags.scripts == [_SCRIPT]  # the page's own script, and no other
    for tag, attrs in tags.tags:
        assert not [a for a in attrs if a.lower().startswith("on")], (tag, attrs)
        if tag == "a":
            assert re.match(r"\./[^:]*$|#[\w-]+$", attrs["href"]), attrs  # inside the folder, no scheme
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
        if tag in ("section", "nav"):
            assert re.fullmatch(r"[\w-]*", attrs.get("id", "")), attrs
    meta = [a for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert meta and "default-src 'none'" in meta[0]["content"] and "unsafe-inline" not in meta[0]["content"].split(
        "script-src")[1]  # fmt: skip
    # Nothing dropped: the hostile text is on the page, as text.
    assert page.count("&lt;img src=x onerror=") >= 6 and "&lt;script&gt;" in page
    assert "javascript:alert(1)" in page  # named, as text
    assert "outside this folder" in page and str((tmp_path / "outside").resolve()) in page
    assert "missing: gone.png" in page
    assert "Unreadable run manifests" in page and "bad.run.json: headline must be a list of strings" in page
    assert 'href="./javascript%3Aalert%281%29"' in page  # the file, linked as a relative path


def test_the_hostile_page_runs_no_injected_code_in_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium on this machine: install Debian's chromium package to run the report test")
    page = write_report(_hostile_folder(tmp_path))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    body = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    assert "data-pwned" not in body and "data-pwned" not in dom.split("</h1>")[0]
    assert body.get("data-images") == "1" and body.get("data-images-loaded") == "1"  # the page's own script ran
    assert not re.search(r'href="javascript:', dom, re.IGNORECASE)


def test_formats_and_json_that_would_exhaust_the_report_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    table = {"title": "t", "columns": ["a", "b"], "rows": [{"a": 1.5, "b": 2}], "formats": {"a": "999999999d",
             "b": ".999999999f"}}  # fmt: skip
    (run / "run.json").write_text(json.dumps({"kind": "k", "title": "t", "section": "s", "config": {},
                                              "tables": [table]}))  # fmt: skip
    (run / "deep.run.json").write_text("[" * 200_000 + "]" * 200_000)
    (run / "digits.run.json").write_text('{"kind": ' + "9" * 5000 + "}")
    page = write_report(run).read_text()
    assert "<td>1.5</td><td>2</td>" in page  # the plain values: no gigabyte-wide cells
    assert "deep.run.json: not a readable JSON manifest (RecursionError)" in page
    assert "digits.run.json: not a readable JSON manifest (ValueError)" in page
