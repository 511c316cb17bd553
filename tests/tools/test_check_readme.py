"""The README / docs command check: the real README and docs pass, and planted mistakes are caught."""
import pytest

from tools import check_readme


@pytest.mark.parametrize("doc", check_readme.default_files(), ids=lambda d: d.name)
def test_every_command_parses_and_every_path_exists(doc):
    assert [str(p) for p in check_readme.check([doc])] == []


def test_the_readme_quick_start_is_two_commands():
    commands = check_readme.quickstart_commands(check_readme.REPO / "README.md")
    assert len(commands) == 2
    assert "pytest" in commands[1] and "moe-denoise denoise" in commands[0]


def _plant(tmp_path, block: str, prose: str = ""):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("# a file that exists\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{prose}\n\n```bash\n{block}\n```\n")
    return [str(p) for p in check_readme.check([readme], repo=tmp_path)]


def test_a_planted_bad_option_is_caught_on_a_continued_line(tmp_path):
    problems = _plant(tmp_path, "moe-denoise denoise docs/real.md -o out.png \\\n    --no-such-option 3\n"
                                "moe-denoise export --flavor portable   # fine")
    assert len(problems) == 1, problems
    assert problems[0].startswith("README.md:6: moe-denoise denoise") and "--no-such-option" in problems[0]


def test_a_bad_choice_in_a_chain_and_an_unknown_command_are_caught(tmp_path):
    problems = _plant(tmp_path, "pip install -e . && moe-denoise export --flavor tiny\nmoe-denoise frobnicate")
    assert len(problems) == 2, problems
    assert "invalid choice: 'tiny'" in problems[0] and "frobnicate" in problems[1]


def test_missing_repository_paths_and_stale_artifacts_are_caught(tmp_path):
    problems = _plant(tmp_path,
                      "moe-denoise denoise docs/nope.png -o docs/written.png\n"
                      "moe-denoise build --onnx artifacts/m.onnx\n"
                      "moe-denoise export -o artifacts/mine.onnx && moe-denoise build --onnx artifacts/mine.onnx\n"
                      "python -m docs.missing_tool",
                      prose="See [the file](docs/real.md), [a missing one](docs/gone.md) and `docs/also_gone.md`.")
    assert any("link docs/gone.md" in p for p in problems), problems
    assert any("`docs/also_gone.md`" in p for p in problems), problems
    assert any("docs/nope.png: no such file" in p for p in problems), problems
    assert any("artifacts/m.onnx: no earlier command" in p for p in problems), problems
    assert any("python -m docs.missing_tool" in p for p in problems), problems
    assert not any("docs/written.png" in p or "artifacts/mine.onnx" in p or "docs/real.md" in p for p in problems)
    assert len(problems) == 5, problems


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, run as a reader would from a clone (its relative paths), in a scratch folder."""
    import re
    import shutil

    from PIL import Image

    blocks = re.findall(r"```python\n(.*?)```", (check_readme.REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example; run each one here"
    images = tmp_path / "docs" / "images"
    images.mkdir(parents=True)
    shutil.copy(check_readme.REPO / "docs" / "images" / "chelsea_noisy.png", images)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md (python block)", "exec"), {})
    with Image.open(tmp_path / "chelsea_api.png") as out, Image.open(images / "chelsea_noisy.png") as noisy:
        assert (out.size, out.mode) == (noisy.size, noisy.mode)


@pytest.mark.parametrize("argv, said", [
    (["--run-quickstart", "DIR", "--plan", "1,x"], "expected the quick start's command numbers, 1 or 2"),
    (["--run-quickstart", "DIR", "--plan", "3"], "got '3'"),
    (["--run-quickstart", "DIR", "--plan", ""], "got ''"),  # passed as '0 of 0 runs exited 0'
    (["--run-quickstart", "DIR", "--timeout", "0"], "--timeout is seconds per command, a number > 0"),
    (["--plan", "1"], "--plan and --timeout are for --run-quickstart DIR"),  # ignored in silence
])
def test_quickstart_options_are_checked_before_the_clone(argv, said, capsys, tmp_path, monkeypatch):
    """'--plan 3' was refused after the clone (leaving DIR, which a second try then refused as not empty), '1,x' was
    a traceback, and an empty plan passed."""
    import tools.check_readme as check_readme

    def no_clone(*args, **kwargs):
        raise AssertionError("the repository was cloned before the options were checked")

    monkeypatch.setattr(check_readme, "run_quickstart", no_clone)
    argv = [str(tmp_path / "qs") if a == "DIR" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        check_readme.main(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err and not (tmp_path / "qs").exists()
