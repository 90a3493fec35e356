"""A reader that leaves early (``canvoy ... | head``) ends canvoy quietly, as it ends Unix tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.certs import pki

LOG = "(1.0) can0 123#0102\n" * 20_000  # more than a pipe buffer of decoded output


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        ["certs", "list", "--certs", "{pki}", "--json"],
        ["certs", "list", "--certs", "{pki}"],
        ["decode", "--dbc", "{dbc}", "-"],
    ],
    ids=" ".join,
)
def test_a_closed_pipe_ends_quietly(tmp_path: Path, argv: list[str]) -> None:
    pki.init_ca(tmp_path / "pki")
    dbc = tmp_path / "one.dbc"
    dbc.write_text(
        'VERSION ""\n\nBU_: ECU\n\nBO_ 291 M: 2 ECU\n SG_ S : 0|16@1+ (1,0) [0|65535] "" ECU\n'
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before canvoy writes a byte: every write is EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "canvoy"]
            + [a.format(pki=tmp_path / "pki", dbc=dbc) for a in argv],
            input=LOG.encode(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == 0  # the reader had what it wanted
