"""``hetfaas token create|list|revoke`` and ``hetfaas serve``'s options, through
``python -m hetfaas.gateway`` (the same parser and run as the ``hetfaas`` command's)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetfaas.gateway import Store
from hetfaas.gateway.cli import build_parser, default_store, parse_rate

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "hetfaas.gateway", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)  # fmt: skip


def test_token_create_prints_it_once_list_hides_it_revoke_ends_it(tmp_path):
    store = str(tmp_path / "t.db")
    made = _run("token", "create", "team-a", "--label", "ci", "--rate", "50/s", "--store", store)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("hft_") and len(made.stdout.splitlines()) == 1
    assert "shown once" in made.stderr
    listed = _run("token", "list", "--json", "--store", store)
    assert listed.returncode == 0 and token not in listed.stdout
    (row,) = json.loads(listed.stdout)
    assert (row["namespace"], row["label"], row["rate_per_s"]) == ("team-a", "ci", 50.0)
    table = _run("token", "list", "--store", store).stdout
    assert row["id"] in table and "active" in table and token[17:] not in table
    with Store(store) as s:
        assert s.verify_token(token).namespace == "team-a"
    assert _run("token", "revoke", row["id"], "--store", store).returncode == 0
    again = _run("token", "revoke", row["id"], "--store", store)
    assert again.returncode == 1 and "no active token" in again.stderr
    assert "revoked" in _run("token", "list", "--store", store).stdout
    with Store(store) as s:
        assert s.verify_token(token) is None
    bad = _run("token", "create", "no spaces", "--store", store)
    assert bad.returncode == 2 and "namespace must be" in bad.stderr


def test_serve_options_and_their_defaults():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.backend, args.rate) == ("127.0.0.1", 8000, "local", None)
    assert args.max_body_bytes == 5_000_000 and args.allow_module == [] and args.cors_origin == []
    args = build_parser().parse_args(
        ["serve", "--rate", "600/min", "--max-body-mb", "0.5", "--allow-module", "a",
         "--allow-module", "b", "--store", "/x/y.db"]
    )  # fmt: skip
    assert args.rate == 10.0 and args.max_body_bytes == 500_000
    assert args.allow_module == ["a", "b"] and str(args.store) == "/x/y.db"
    assert parse_rate("5") == parse_rate("5/s") == 5.0 and parse_rate("3600/h") == 1.0
    for bad in ("0", "-1/s", "x", "5/fortnight"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)


def test_the_store_defaults_to_the_state_folder_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HETFAAS_GATEWAY_STORE", str(tmp_path / "env.db"))
    assert default_store() == tmp_path / "env.db"
    monkeypatch.delenv("HETFAAS_GATEWAY_STORE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_store() == tmp_path / "hetfaas" / "gateway.db"


def test_serve_refuses_a_store_another_gateway_holds(tmp_path):
    with Store(tmp_path / "g.db") as s:
        s.lock_for_gateway()
        proc = _run("serve", "--port", "1", "--store", str(tmp_path / "g.db"))
    assert proc.returncode == 2 and "another gateway serves the store" in proc.stderr


def test_the_parsers_import_no_web_framework():
    code = ("import sys, hetfaas.gateway.cli, hetfaas.gateway.store; "
            "print('fastapi' in sys.modules, 'uvicorn' in sys.modules)")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)  # fmt: skip
    assert out.stdout.split() == ["False", "False"]
