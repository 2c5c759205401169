"""What publishes the companion: the GitHub workflows, CITATION.cff and the book's "Cite this" page.

The schema checks run check-jsonschema with the schemas it ships (GitHub workflows, Citation File
Format 1.2.0), so they need no network.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def check_jsonschema(schema: str, *files: Path) -> None:
    """Validate ``files`` against check-jsonschema's built-in ``schema``; fail with its report."""
    local = Path(sys.executable).with_name("check-jsonschema")
    tool = str(local) if local.exists() else shutil.which("check-jsonschema")
    assert tool, "check-jsonschema is not installed (pip install -e '.[test]')"
    proc = subprocess.run([tool, "--builtin-schema", schema, *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_follow_githubs_schema():
    assert {p.name for p in WORKFLOWS} >= {"book.yml", "test.yml"}
    check_jsonschema("vendor.github-workflows", *WORKFLOWS)


def test_citation_cff_follows_the_citation_file_format():
    check_jsonschema("vendor.citation-file-format", ROOT / "CITATION.cff")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert "2504.03794" in cff["preferred-citation"]["url"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_run_makefile_targets(workflow):
    """Each workflow runs `make <target>`, and every target it names exists (so CI tests what it runs)."""
    steps = [step for job in yaml.safe_load(workflow.read_text())["jobs"].values() for step in job.get("steps", [])]
    called = {target for step in steps for target in re.findall(r"\bmake\s+([\w-]+)", step.get("run", ""))}
    defined = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert called, f"{workflow.name} runs no make target"
    assert called <= defined, f"{workflow.name} runs targets the Makefile lacks: {sorted(called - defined)}"


def test_book_workflow_publishes_the_committed_notebooks():
    """Pages gets book/_build/html, built with execution off (the notebooks are rendered as committed)."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    steps = workflow["jobs"]["build"]["steps"]
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert [s["with"]["path"] for s in uploads] == ["book/_build/html"]
    deploy = workflow["jobs"]["deploy"]
    assert deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"


def _citation_extension():
    spec = importlib.util.spec_from_file_location("book_citation", ROOT / "book" / "_ext" / "citation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bibtex_is_written_from_citation_cff():
    citation = _citation_extension()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = citation.paper_bibtex(cff, "yang2026entrodrop")
    assert paper.startswith("@inproceedings{yang2026entrodrop,") and paper.endswith("}")
    assert "Yang, Liangwei and Xu, Yuhui" in paper and paper.count(" and ") == 7
    assert "arXiv:2504.03794" in paper and "year      = {2026}" in paper
    software = citation.software_bibtex(cff, "entrodrop_companion", "https://example.org/repo")
    assert "author  = {{EntroDrop companion contributors}}" in software
    assert "url     = {https://example.org/repo}" in software and "version = {0.1.0}" in software
