"""``routelens app``: argument checks, the Streamlit command line it runs, where it finds the app."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from routelens.cli import main
from routelens.commands import app as app_command


def test_streamlit_command_binds_localhost_and_passes_the_runs_folder(tmp_path):
    command = app_command.streamlit_command(tmp_path)
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(command[4]).name == "main.py" and Path(command[4]).is_file()
    options = dict(zip(command[5::2], command[6::2]))
    assert options["--server.address"] == "127.0.0.1"
    assert options["--server.port"] == "8501"
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"
    assert command[-2:] == ["--", str(tmp_path.resolve())]


def test_host_and_port_reach_streamlit(tmp_path):
    command = app_command.streamlit_command(tmp_path, host="0.0.0.0", port=9000)
    options = dict(zip(command[5::2], command[6::2]))
    assert (options["--server.address"], options["--server.port"]) == ("0.0.0.0", "9000")


def test_app_is_found_next_to_the_installed_package():
    folder = app_command.app_dir()
    assert (folder / "main.py").is_file() and (folder / "views" / "overview.py").is_file()


def test_app_dir_override_that_is_wrong_gives_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROUTELENS_APP_DIR", str(tmp_path / "nowhere"))
    assert main(["app", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("routelens: error: dashboard scripts not found") and "\n" not in err


def test_missing_runs_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["app", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs folder" in err and "does not exist" in err and "routelens capture --out" in err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_bad_port_is_rejected_by_the_parser(tmp_path, port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", str(tmp_path), "--port", port])
    assert exit_info.value.code == 2
    assert "--port" in capsys.readouterr().err
