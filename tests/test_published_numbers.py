"""The numbers the README and docs/evaluation.md publish are those of the runs that made them, not typed in: quality
against benchmarks/results/quality/evaluation.json (written by `moe-denoise evaluate`), speed against the benchmark
results, the README's photo commands by running them. Each table cell and each number of the sentences is read."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
RECORD = json.loads((REPO / "benchmarks" / "results" / "quality" / "evaluation.json").read_text())
LEVELS = ["0", "5", "15", "25", "50", "75"]

# README row label -> (where in the record, method name there)
ROWS = {
    "noisy input": ("rows", "noisy input"),
    "seed checkpoint": ("rows", "seed checkpoint"),
    "`sigma20` (specialist)": ("rows", "sigma-0.2 specialist"),
    "**`blind` (default)**": ("rows", "blind"),
    "BM3D, told sigma (16-image subset)": ("bm3d", "BM3D"),
    "`blind` on that subset": ("bm3d", "blind"),
}


def _table() -> dict[str, list[str]]:
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ROWS:
            rows[cells[0]] = [c.strip("*") for c in cells[1:]]
    return rows


def _mean(where: str, method: str, level: str) -> float | None:
    table = RECORD["cifar"]["rows"] if where == "rows" else RECORD["cifar"]["bm3d"]["rows"]
    cell = table["clip"].get(level, {}).get(method)
    return None if cell is None else cell["psnr"]["mean"]


def test_every_row_of_the_quality_table_is_found():
    assert sorted(_table()) == sorted(ROWS), "the README's quality table lost or renamed a row"


@pytest.mark.parametrize("label", list(ROWS))
def test_the_quality_table_is_the_evaluations(label):
    where, method = ROWS[label]
    for level, shown in zip(LEVELS, _table()[label]):
        value = _mean(where, method, level)
        if value is None or (method == "BM3D" and level == "0"):  # the clean input against itself; BM3D told
            assert shown in ("(clean)", "-"), (label, level, shown)  # sigma 0 returns its input (over 100 dB)
        else:
            assert shown == f"{value:.2f}", f"{label} at sigma {level}: README {shown}, evaluation {value:.2f}"


def test_the_sentences_under_the_table_are_the_evaluations():
    seed = RECORD["cifar"]["seed_protocol"]["rows"]
    camera = RECORD["photos"]["target_level"]["rows"]
    expected = {
        "`blind` scores {} dB": seed["blind"]["psnr"]["mean"],
        "SSIM {}, level with": seed["blind"]["ssim"]["mean"],
        "seed checkpoint\n({})": seed["seed checkpoint"]["psnr"]["mean"],
        "`sigma20` ({} /": seed["sigma-0.2 specialist"]["psnr"]["mean"],
        "/ {}). Photos": seed["sigma-0.2 specialist"]["ssim"]["mean"],
        "sigma 0.2 gives {} dB": camera["blind"]["psnr"],
        "best Gaussian blur {},": camera["best Gaussian blur"]["psnr"],
        "BM3D {}, `sigma20`": camera["BM3D"]["psnr"],
        "`sigma20` {})": camera["sigma-0.2 specialist"]["psnr"],
    }
    text = " ".join(README.split())  # line breaks as spaces
    for pattern, value in expected.items():
        pattern = " ".join(pattern.split())
        digits = 3 if "SSIM" in pattern or pattern.startswith("/") else 2
        shown = re.search(re.escape(pattern).replace(r"\{\}", r"([\d.]+)"), text)
        assert shown, f"README no longer says {pattern!r}"
        assert shown.group(1) == f"{value:.{digits}f}", f"{pattern}: README {shown.group(1)}, evaluation {value}"


# the speed table's backends under the names of the runs that measured them (renamed since: docs/benchmarks.md)
MEASURED_AS = {"torch-seed": "torch-gather", "torch-seed-cuda": "torch-gather-cuda"}


def _speed_rows() -> list[tuple[str, str, list[str]]]:
    """(results file, measured backend name, [batch 1, batch 64, ratio]) for each row of the README's speed table."""
    rows, machine = [], ""
    section = README.split("## Speed", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] == "machine" or cells[0].startswith("---"):
            continue
        machine = cells[0] or machine  # an empty first cell continues the machine above
        results = "gpu/results.json" if machine.startswith("H200") else "results.json"
        name = cells[1].split(" (")[0]
        rows.append((results, MEASURED_AS.get(name, name), cells[2:]))
    return rows


def _rounds_to(shown: str, value: float) -> bool:
    """``shown`` ("2.20 ms", "19,309 images/s", "6.69x") is ``value`` rounded to the digits shown."""
    number = re.match(r"[\d,.]+", shown).group(0).replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return number == f"{value:.{decimals}f}"


def test_the_speed_table_is_the_benchmarks():
    rows = _speed_rows()
    assert len(rows) == 5, "the README's speed table lost or gained a row; check this test's reading of it"
    for results, backend, (latency, throughput, ratio) in rows:
        record = json.loads((REPO / "benchmarks" / "results" / results).read_text())
        mode = "compute" if results.startswith("gpu") else "e2e"  # as the table's first column says
        cell = {c["batch"]: c for c in record["results"]
                if c["backend"] == backend and c["mode"] == mode and c["status"] == "ok"}
        assert latency.endswith(" ms") and _rounds_to(latency, cell[1]["latency_ms"]["p50"]), (backend, latency)
        assert throughput.endswith(" images/s") and _rounds_to(throughput, cell[64]["throughput_ips"]), backend
        assert ratio.endswith("x") and _rounds_to(ratio, cell[64]["ratio_vs_baseline"]["throughput"]), backend


def test_the_photo_commands_print_what_the_readme_says(tmp_path):
    """The 'Denoise a photo' section's commands, run as written in a scratch folder (the demo photo copied to its
    path), print the PSNR lines its comments show."""
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("skimage.data", reason="the clean photo comes from scikit-image (the eval extra)")
    section = README.split("## Denoise a photo", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    (tmp_path / "docs" / "images").mkdir(parents=True)
    shutil.copy(REPO / "docs" / "images" / "chelsea_noisy.png", tmp_path / "docs" / "images")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    checked = 0
    for block in blocks:
        output = ""
        for line in block.splitlines():
            if line.startswith("# PSNR against"):
                assert line[2:] in output, f"README: {line[2:]!r}; the command printed:\n{output}"
                checked += 1
            elif line.strip() and not line.startswith(("pip ", "#")):
                command = line.split("  #")[0]
                done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                      timeout=300)
                assert done.returncode == 0, f"{command}\n{done.stderr}"
                output = done.stdout
    assert checked == 2, "the section's two PSNR comments were not both found"


EVALUATION_MD = (REPO / "docs" / "evaluation.md").read_text()
PHOTO_ROW = re.compile(r"(?P<photo>\w+)(?: \((?:colour|gray)\)|, (?P<what>with the guard|BM3D|best blur))$")
PHOTO_METHOD = {None: "blind", "with the guard": "blind + guard", "BM3D": "BM3D", "best blur": "best Gaussian blur"}
CIFAR_METHOD = {"noisy input": "noisy input", "seed checkpoint": "seed checkpoint",
                "sigma-0.2 specialist": "sigma-0.2 specialist", "blind": "blind"}


def _level_tables(text: str) -> list[tuple[str, list[str]]]:
    """(label, six cells) of every table row with a cell per noise level (sigma 0 to 75), bold removed."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and not cells[1].startswith(("sigma", "---")):
            rows.append((cells[0], cells[1:]))
    return rows


def test_the_evaluation_pages_tables_are_the_evaluations():
    """docs/evaluation.md's CIFAR-10 table (clipped / unclipped) and photo table, cell by cell."""
    cifar, photos = RECORD["cifar"]["rows"], RECORD["photos"]["photos"]
    checked = 0
    for label, cells in _level_tables(EVALUATION_MD):
        for level, shown in zip(LEVELS, cells):
            if label in CIFAR_METHOD:
                values = [cifar[p][level][CIFAR_METHOD[label]]["psnr"]["mean"] for p in ("clip", "unclipped")]
            else:
                match = PHOTO_ROW.match(label)
                assert match, f"docs/evaluation.md: a table row this test cannot read: {label!r}"
                cell = photos[match["photo"]]["rows"][level].get(PHOTO_METHOD[match["what"]])
                values = [None if cell is None else cell["psnr"]]
            if values[0] is None or (shown == "-" and values[0] > 100):  # clean input; BM3D told sigma 0
                assert shown in ("clean", "-"), (label, level, shown)
                continue
            parts = shown.split(" / ")
            assert all(_rounds_to(s, v) for s, v in zip(parts, values)), f"{label} at sigma {level}: {shown}"
            checked += 1
    assert checked > 80, f"only {checked} cells were read: has the page's table layout changed?"


def _bench_tables(text: str) -> list[tuple[list[int], str, list[str]]]:
    """(batches of the header, backend, cells) of every 'p50 · throughput · ratio' table row of a page."""
    rows, batches = [], []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "backend" and all(c.startswith("batch ") for c in cells[1:]):
            batches = [int(c.split()[1]) for c in cells[1:]]
        elif len(cells) > 1 and all(" · " in c for c in cells[1:]):
            rows.append((batches, cells[0].split(" (")[0], cells[1:]))
    return rows


def test_the_benchmark_pages_tables_are_the_benchmarks():
    """docs/benchmarks.md's CPU (end to end) and H200 (compute only) tables, cell by cell, against the runs' JSON."""
    checked = 0
    for batches, backend, cells in _bench_tables((REPO / "docs" / "benchmarks.md").read_text()):
        results, mode = ("gpu/results.json", "compute") if "cuda" in backend or "triton" in backend else \
            ("results.json", "e2e")
        record = json.loads((REPO / "benchmarks" / "results" / results).read_text())
        measured = {c["batch"]: c for c in record["results"]
                    if c["backend"] == MEASURED_AS.get(backend, backend) and c["mode"] == mode and c["status"] == "ok"}
        for batch, cell in zip(batches, cells):
            latency, throughput, ratio = cell.split(" · ")
            m = measured[batch]
            assert _rounds_to(latency, m["latency_ms"]["p50"]), (backend, batch, latency)
            assert _rounds_to(throughput, m["throughput_ips"]), (backend, batch, throughput)
            assert _rounds_to(ratio, m["ratio_vs_baseline"]["throughput"]), (backend, batch, ratio)
            checked += 1
    assert checked == 36, f"{checked} cells read: has the page's table layout changed?"
