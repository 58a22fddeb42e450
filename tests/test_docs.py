"""The README and docs/ say what the code does (issue 25): every ``monaiunetseg <cmd> --option`` they name exists,
their example output has the real format, the help names the real model sets, the bundle commands print MONAI's
config warning no more, and README.md stays short with every relative link resolving."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from monaiunetseg.cli import build_parser

from conftest import BUNDLE_DIR, REPO, SAMPLE_FLAIR

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _subcommands() -> dict[str, set[str]]:
    """``monaiunetseg`` subcommand -> its option strings (what ``monaiunetseg <cmd> --help`` lists)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def _command_texts(text: str) -> list[str]:
    """Each ``monaiunetseg <cmd> ...`` command line of a fenced block (with its ``\\`` continuations) or inline
    code span."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0]
            if re.search(r"\bmonaiunetseg \w", line):
                found.append(line)
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", outside) if re.search(r"\bmonaiunetseg \w", span)]
    return found


def test_every_cli_option_named_in_the_docs_exists():
    commands = _subcommands()
    checked = 0
    for doc in DOCS:
        for text in _command_texts(doc.read_text()):
            for m in re.finditer(r"\bmonaiunetseg ([a-z][a-z-]*)", text):
                cmd = m.group(1)
                assert cmd in commands, f"{doc.name}: `monaiunetseg {cmd}` is no command: {text}"
                rest = re.split(r"\bmonaiunetseg [a-z]", text[m.end():])[0]
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                    assert option in commands[cmd], f"{doc.name}: `monaiunetseg {cmd}` has no {option}: {text}"
                    checked += 1
    assert checked >= 10  # the docs do name options


def test_segment_help_names_the_model_sets_of_the_bundle(capsys):
    sets = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())["models"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    model_help = help_text[help_text.rindex("--model SET"):help_text.rindex("--weights WEIGHTS")]
    assert re.findall(r"'(\w+)' \(", model_help) == list(sets)
    assert len(sets["default"]) == 3 and "fold models 0-2" in model_help
    assert len(sets["fast"]) == 1 and "fold model 0 alone" in model_help
    assert len(sets["full"]) == 5 and "all five fold models" in model_help


def _mask(line: str) -> str:
    """A printed line with its measured numbers (volumes, seconds, confidences) replaced: its format."""
    return re.sub(r"\d+\.\d+", "<x>", line.strip())


def test_readme_example_output_is_the_real_output(tmp_path: Path):
    """Run the README's ``segment`` example as written (from a folder laid out like the repository): its printed
    lines have the README's format, the volume printed is the README's, and the overlay caption is the README's."""
    readme = (REPO / "README.md").read_text() + "".join(p.read_text() for p in DOCS[1:])
    example = "monaiunetseg segment MONAIUNetSeg/Resources/Sample/TCGA_DU_A5TR_19970726_flair.nii.gz -o out/ --overlay"
    assert example in readme
    sample = tmp_path / SAMPLE_FLAIR.relative_to(REPO)
    sample.parent.mkdir(parents=True)
    sample.write_bytes(SAMPLE_FLAIR.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "monaiunetseg.cli", *example.split()[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(printed) == 2
    block = re.search(r"```\n(ok +TCGA_DU_A5TR_19970726_flair: .*?)```", readme, flags=re.S)
    assert block, "the README's example output block"
    documented = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert [_mask(ln) for ln in documented] == [_mask(ln) for ln in printed]
    volume = re.search(r": (\d+\.\d+) mL", printed[0]).group(1)
    assert f": {volume} mL" in documented[0]

    from PIL import Image

    caption = Image.open(tmp_path / "out" / "TCGA_DU_A5TR_19970726_flair_overlay.png").info["Description"]
    shown = re.search(r"e\.g\. `(slice \d+/\d+ \(axial\), FLAIR abnormality [\d.]+ mL)`", readme)
    assert shown and caption.startswith(shown.group(1) + ";"), (caption, shown and shown.group(1))
    assert f"FLAIR abnormality {float(volume):.1f} mL" in caption


def test_bundle_commands_hide_only_monais_config_warning(tmp_path: Path):
    """The documented ``python -W "ignore:parsing config_file" -m monai.bundle run ...`` prints neither MONAI's
    config-code warning nor the filtered third-party noise, and no progress bar when not on a terminal; without
    the option the warning is there (so the filter, not chance, hides it)."""
    from monaiunetseg.console import BUNDLE_CONFIG_FILTER

    readme = "".join(p.read_text() for p in DOCS)
    assert f'python -W "{BUNDLE_CONFIG_FILTER}" -m monai.bundle run inference' in readme
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "flair.nii.gz").write_bytes(SAMPLE_FLAIR.read_bytes())
    args = ["-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json", "--meta_file",
            "configs/metadata.json", "--logging_file", "configs/logging.conf", "--input_dir", str(tmp_path / "in"),
            "--device", "cpu", "--model", "fast"]
    outputs = {}
    for name, extra in (("filtered", ["-W", BUNDLE_CONFIG_FILTER]), ("plain", [])):
        proc = subprocess.run([sys.executable, *extra, *args, "--output_dir", str(tmp_path / name)], cwd=BUNDLE_DIR,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        outputs[name] = proc.stdout + proc.stderr
    assert "parsing config_file" in outputs["plain"]
    filtered = outputs["filtered"]
    assert "parsing config_file" not in filtered and "Warning" not in filtered, filtered
    assert "1 ok" in filtered and "it/s]" not in filtered


def _python_block_after(marker: str) -> str:
    for doc in DOCS:
        text = doc.read_text()
        if marker in text:
            return re.search(r"```python\n(.*?)```", text[text.index(marker):], flags=re.S).group(1)
    raise AssertionError(f"no document says {marker!r}")


def test_no_gui_snippets_say_where_they_run(tmp_path: Path):
    """The Slicer snippet says it runs in Slicer's console (outside it, it fails as the docs say); the one that
    claims to run without Slicer does, in a fresh Python, from a folder laid out like the repository."""
    slicer_snippet = _python_block_after("**in Slicer's Python console**")
    assert slicer_snippet.startswith("import MONAIUNetSeg")
    proc = subprocess.run([sys.executable, "-c", "import MONAIUNetSeg"], cwd=REPO / "MONAIUNetSeg",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "No module named 'qt'" in proc.stderr

    snippet = _python_block_after("Without Slicer, the same core")
    sample = tmp_path / SAMPLE_FLAIR.relative_to(REPO)
    sample.parent.mkdir(parents=True)
    sample.write_bytes(SAMPLE_FLAIR.read_bytes())
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shape, voxels = re.fullmatch(r"(\(256, 256, 38\)) (\d+) voxels\n", proc.stdout).groups()
    assert int(voxels) > 0


def test_extension_screenshot_is_a_real_result(segmenter, tmp_path: Path):
    """The screenshot the extension metadata points to is the --overlay PNG of the bundled sample (default set) as
    segmenting the sample draws it today (scripts/render_screenshot.py): same size, same caption with the volume
    and the verdict."""
    from PIL import Image

    from monaiunetseg.batch.options import BatchOptions
    from monaiunetseg.batch.run import run_batch

    png = REPO / "MONAIUNetSeg" / "Resources" / "Screenshots" / "sample_overlay.png"
    assert "MONAIUNetSeg/Resources/Screenshots/sample_overlay.png" in (REPO / "CMakeLists.txt").read_text()
    (row,) = run_batch([SAMPLE_FLAIR], tmp_path / "out", BatchOptions(overlay=True, progress=False),
                       segmenter=segmenter).results
    committed, fresh = Image.open(png), Image.open(row.overlay)
    assert committed.size == fresh.size and min(committed.size) >= 500
    assert committed.info["Description"] == fresh.info["Description"]
    assert committed.info["Software"].startswith("MONAIUNetSeg ")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation (backticks, colons, ...) dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = github_anchor(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


LINKED_DOCS = [*DOCS, REPO / "monai_bundle" / "docs" / "README.md", REPO / "MONAIUNetSeg" / "Resources" / "Sample" / "README.md"]


def test_readme_is_short_and_every_relative_link_resolves():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    assert len(DOCS) >= 10  # the README's detail lives in docs/
    checked = 0
    for doc in LINKED_DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.relative_to(REPO)}: link to missing {target}"
            if anchor:
                assert anchor in anchors_of(file), f"{doc.relative_to(REPO)}: no heading for #{anchor} in {file.name}"
            checked += 1
    assert checked >= 20


def test_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    for page in DOCS[1:]:
        assert f"](docs/{page.name})" in readme, page.name


def test_readme_model_table_is_the_committed_figures():
    """The README's one table of shipped models: the sets of configs/inference.json, the recipe's out-of-fold figure
    and fold model 0's own fold, as docs/oof_summary.json has them."""
    readme = (REPO / "README.md").read_text()
    sets = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())["models"]
    oof = json.loads((BUNDLE_DIR / "docs" / "oof_summary.json").read_text())
    rows = {r.split("|")[1].strip().strip("`"): r for r in readme.splitlines() if re.match(r"\| `\w+` \|", r)}
    assert list(rows) == list(sets)
    recipe = f"{oof['all']['mean']:.3f} / {oof['all']['median']:.3f} ({oof['all']['n']} patients)"
    assert recipe in rows["default"]
    fold0 = oof["by_fold"]["0"]
    assert f"{fold0['mean']:.3f} / {fold0['median']:.3f} on the {fold0['n']} patients of fold 0" in rows["fast"]
    assert "fold models 0, 1, 2" in rows["default"] and "all five fold models" in rows["full"]
