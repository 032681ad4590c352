"""The documentation site builds offline and strictly (`make docs`): every page in the navigation,
no broken link or anchor, the settings reference generated from the server's settings object,
no web font or CDN asset, and nothing in the built pages names the build machine."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings
from tests.docs.pages import DOCS, REPO
from tests.docs.test_words import offending


def mkdocs(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = mkdocs("build", "--strict", "--site-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def text_of(page: Path) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_every_page_is_built(site: Path) -> None:
    sources = sorted(p.relative_to(DOCS).with_suffix(".html") for p in DOCS.rglob("*.md"))
    assert len(sources) >= 14
    assert not [p for p in sources if not (site / p).is_file()]


def test_the_settings_reference_lists_every_setting(site: Path) -> None:
    page = text_of(site / "serving" / "settings.html")
    missing = [f for f in Settings.model_fields if f"ELF_{f.upper()}" not in page]
    assert not missing, missing
    assert "elf:settings-table" not in page


def test_the_api_reference_renders_the_entry_points(site: Path) -> None:
    page = text_of(site / "reference.html")
    for name in ("create_app", "classify", "infer", "export_model", "retrofit", "calibrate"):
        assert re.search(rf"\b{name}\b", page), name
    assert "Returns" in page and "Args" not in page  # Google-style sections rendered, not raw


def test_the_site_fetches_nothing_from_elsewhere(site: Path) -> None:
    for page in site.rglob("*.html"):
        refs = re.findall(r'(?:src|href)="(https?:[^"]+)"', page.read_text())
        assets = [r for r in refs if re.search(r"\.(?:css|js|woff2?|ttf)(?:\?|$)", r)]
        assert not assets, f"{page.name}: {assets}"
        assert "fonts.googleapis" not in page.read_text()


def test_no_built_page_names_the_build_machine(site: Path) -> None:
    for page in site.rglob("*.html"):
        found = offending(text_of(page))
        assert not found, f"{page.relative_to(site)}:\n" + "\n".join(found)


def test_a_page_missing_from_the_navigation_fails_the_build(tmp_path: Path) -> None:
    config = (REPO / "mkdocs.yml").read_text().replace("  - API reference: reference.md\n", "")
    assert "reference.md" not in config.split("nav:")[1]
    config = config.replace("docs_dir: docs", f"docs_dir: {DOCS}")
    config = config.replace("- docs_hooks/", f"- {REPO}/docs_hooks/")
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = mkdocs("build", "--strict", "-f", str(tmp_path / "mkdocs.yml"), "--site-dir",
                  str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode != 0 and "reference.md" in proc.stderr, proc.stderr[-2000:]


def test_the_screenshot_is_on_a_page() -> None:
    shot = DOCS / "assets" / "site.png"
    assert shot.stat().st_size > 20_000  # a real screenshot, not a placeholder
    assert "assets/site.png" in (DOCS / "getting-started.md").read_text()
