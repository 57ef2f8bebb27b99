"""``chiffon infra search`` as a user runs it: a separate process over a catalog folder,
a table or JSON, the catalog from --catalog or CHIFFON_AGENT_CATALOG_DIR, precise errors,
and the model's libraries never loaded by the rest of the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_cli

HOMELAB = Path(__file__).resolve().parents[1] / "fixtures" / "homelab_catalog"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    return {**clean, "XDG_CACHE_HOME": str(tmp_path / "cache")}


async def test_a_request_prints_the_matching_playbook_first_in_a_table(
    env: dict[str, str],
) -> None:
    code, out, err = await run_cli(
        env, "infra", "search", "deploy uptime monitor", "--catalog", str(HOMELAB), "--limit", "3"
    )

    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 3
    assert "deploy-uptime-kuma" in rows[0] and "meaning" in rows[0]
    assert "uncertain" not in rows[0]
    assert all("uncertain" in row for row in rows[1:])
    assert err == ""


async def test_json_for_scripts_with_the_catalog_from_the_environment(
    env: dict[str, str],
) -> None:
    code, out, err = await run_cli(
        {**env, "CHIFFON_AGENT_CATALOG_DIR": str(HOMELAB)},
        "infra",
        "search",
        "harden-ssh",
        "--json",
        "--limit",
        "2",
    )

    assert code == 0, err
    answer = json.loads(out)
    assert answer["best"] == "harden-ssh" and answer["uncertain"] is False
    assert [m["matched_by"] for m in answer["matches"]] == ["name", "meaning"]


async def test_an_unrelated_request_is_marked_uncertain(env: dict[str, str]) -> None:
    code, out, err = await run_cli(
        env,
        "infra",
        "search",
        "bake a chocolate cake",
        "--catalog",
        str(HOMELAB),
        "--threshold",
        "0.9",
    )

    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rows and all("uncertain" in row for row in rows)
    assert "no playbook matches with confidence >= 0.9" in err


async def test_a_playbooks_description_is_shown_never_obeyed(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A catalog is files anyone with write access to it wrote: markup and a bidi override in
    # a description are printed as text (an escape sequence cannot get this far: YAML
    # refuses control characters, and the catalog skips such a file).
    (tmp_path / "catalog" / "playbooks").mkdir(parents=True)
    (tmp_path / "catalog" / "playbooks" / "deploy-uptime-kuma.yml").write_text(
        "# description: [bold red]Deploy[/bold red] Uptime Kuma \u202eevil\n"
        "- name: Uptime Kuma\n  hosts: all\n  tasks: []\n"
    )
    code, out, err = await run_cli(
        env, "infra", "search", "deploy-uptime-kuma", "--catalog", str(tmp_path / "catalog")
    )

    assert code == 0, err
    assert "[bold red]Deploy[/bold red]" in out
    assert "\u202e" not in out and "\\u202e" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["deploy"], 2, "no catalog: pass --catalog DIR or set CHIFFON_AGENT_CATALOG_DIR"),
        (["deploy", "--catalog", "/nonexistent"], 4, "has no playbooks/ folder"),
        (["", "--catalog", str(HOMELAB)], 2, "the query is empty"),
        (["deploy", "--catalog", str(HOMELAB), "--limit", "0"], 2, "--limit"),
    ],
)
async def test_a_bad_invocation_says_what_is_wrong(
    env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    got, out, err = await run_cli(env, "infra", "search", *args)

    assert got == code
    assert message in err and out == ""


def test_the_rest_of_the_cli_never_loads_the_model() -> None:
    probe = (
        "import sys; from chiffon.cli.main import app; "
        "print(sorted(m for m in ('onnxruntime', 'tokenizers') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()

    assert loaded == "[]"
