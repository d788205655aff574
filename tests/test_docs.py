"""The documentation: the supported table is what the registries say, the README's quickstart
runs as written, and the README and docs link only to files in the repository."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_supported_table_matches_the_registries():
    spec = importlib.util.spec_from_file_location(
        "supported_table", os.path.join(ROOT, "docs", "supported_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert text == _read("docs", "supported.md"), (
        "docs/supported.md is out of date: run python docs/supported_table.py")
    from tfpock.layers import WEIGHTED_LAYERS
    assert all(f"| {cls.__name__} |" in text for cls in WEIGHTED_LAYERS)


def quickstart_blocks() -> list[tuple[str, str]]:
    section = _read("README.md").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


def test_readme_quickstart_runs_verbatim(tmp_path, monkeypatch, capsys):
    blocks = quickstart_blocks()
    assert [kind for kind, _ in blocks] == ["python", "bash"]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__quickstart__"}
    exec(compile(blocks[0][1], "README.md quickstart", "exec"), namespace)
    history = namespace["history"]
    assert len(history["val_accuracy"]) == 5
    assert history["loss"][-1] < history["loss"][0]
    # `tfpock` as the console script runs it, from this checkout
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tfpock").write_text(f"#!/bin/sh\nexec {sys.executable} -m tfpock.cli \"$@\"\n")
    (bin_dir / "tfpock").chmod(0o755)
    result = subprocess.run(["bash", "-e", "-c", blocks[1][1]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ROOT,
                                 "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert "builtin-only: yes" in result.stdout
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 6
    assert set(np.load(tmp_path / "ckpt.npz").files) > {"__tfpock__"}


def test_readme_and_docs_link_only_files_in_the_repository():
    pages = ["README.md"] + [os.path.join("docs", f) for f in os.listdir(
        os.path.join(ROOT, "docs")) if f.endswith(".md")]
    for page in pages:
        text = _read(page)
        assert "NOTES.md" not in text and "../shared" not in text, page
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page} links to {target}, not in the repository"
        for cited in re.findall(r"`((?:tfpock|tests|bench|graph_passes|docs|examples)/"
                                r"[\w/.-]+\.(?:py|md))`", text):
            assert os.path.exists(os.path.join(ROOT, cited)), f"{page} cites {cited}"
