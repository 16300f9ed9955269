"""Where the dashboard and the demo data are found: inside the package (a wheel) or beside it (a checkout)."""

from __future__ import annotations

from pathlib import Path

from routelens import bundled

REPO = Path(__file__).resolve().parents[1]


def test_a_checkout_uses_its_own_app_and_data_folders():
    assert bundled.app_dir() == REPO / "app" and (bundled.app_dir() / "main.py").is_file()
    assert bundled.data_dir() == REPO / "data" and (bundled.data_dir() / "demo-moe" / "config.json").is_file()


def test_a_wheel_layout_uses_the_copies_inside_the_package(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "routelens"
    (package / "_app").mkdir(parents=True)
    monkeypatch.setattr(bundled, "PACKAGE_DIR", package)
    assert bundled.app_dir() == package / "_app"
    assert bundled.data_dir() == tmp_path / "site-packages" / "data"  # no _data inside: the checkout layout's place
