"""Facts the docs state that the code decides: shipped file names, the ACL, the exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from canvoy import dbc as shipped
from canvoy.broker.config import render_acl
from canvoy.certs import pki
from canvoy.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from tests.agentkit import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_shipped_files_the_docs_name_exist(doc: Path) -> None:
    text = doc.read_text()
    named = set(re.findall(r"\b(demo_[a-z0-9_]+\.(?:dbc|yaml))\b", text))
    assert named <= set(shipped.names()), f"{doc}: {sorted(named - set(shipped.names()))}"


def test_security_md_states_the_acl_the_broker_writes(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pki.init_ca(root)
    pki.issue(root, "device", "D")
    pki.issue(root, "bridge", "b")
    pki.issue(root, "operator", "o")
    acl = render_acl(pki.identities(root))
    table = (REPO / "docs" / "SECURITY.md").read_text()
    rows: dict[str, str] = {}  # identity -> its rows of the ACL table (and of others, joined)
    for m in re.finditer(r"^ *\| (device `D`|bridge|operator) \|.*$", table, re.MULTILINE):
        key = m.group(1).split()[0]
        rows[key] = rows.get(key, "") + m.group(0)
    for block in acl.split("\n\n"):
        user = re.search(r"OU=(\w+)", block)
        if user is None:
            continue
        row = rows[user.group(1)]
        for topic in re.findall(r"topic (?:read|write) (\S+)", block):
            assert f"`{topic}`" in row, f"SECURITY.md {user.group(1)}: {topic} missing"


def test_readme_exit_code_table_is_the_cli_s() -> None:
    text = (REPO / "README.md").read_text()
    codes = {int(c) for c in re.findall(r"^\| (\d+) \|", text, re.MULTILINE)}
    assert codes == {EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED}
