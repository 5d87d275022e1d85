"""Packaging promises: importing imgcls stays light, the CLI is installed, the docs agree with the code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT_MODULES = ["imgcls", "imgcls.types", "imgcls.errors", "imgcls.store", "imgcls.ingest", "imgcls.collect",
                 "imgcls.interpret", "imgcls.jobs", "imgcls.runs", "imgcls.train", "imgcls.predict", "imgcls.cli", "imgcls.search", "imgcls.credits", "imgcls.download",
                 "imgcls.split", "imgcls.suspects", "imgcls.scoring", "imgcls.compare", "imgcls.cleaning"]


def test_importing_imgcls_does_not_import_torch_fastai_or_discord():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in LIGHT_MODULES)
            + "print(sorted(m for m in ('torch', 'fastai', 'discord', 'timm', 'torchvision', 'cleanlab', 'sklearn')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_imgcls_never_imports_discord():
    for path in (ROOT / "imgcls").rglob("*.py"):
        text = path.read_text()
        assert "import discord" not in text and "from discord" not in text, path


def test_the_imgcls_command_is_installed():
    exe = Path(sys.executable).parent / "imgcls"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    for command in ("init", "add-folder", "images", "train", "results", "suspects", "predict", "delete", "relabel",
                    "undo"):
        assert command in out.stdout


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    head = (ROOT / "README.md").read_text().split("\n\n")[1]
    assert "make run" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
