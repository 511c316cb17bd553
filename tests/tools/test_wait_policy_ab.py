"""tools.wait_policy_ab: both OpenMP wait policies write the same bytes, each is timed with the policy it names, and
its own processes are not counted as other work (the timing itself is a benchmark, run by hand: docs/benchmarks.md)."""
import os
import subprocess
import sys

import pytest

from tools import wait_policy_ab


def test_both_policies_write_the_same_photo_and_are_reported(tmp_path, capsys, monkeypatch):
    pytest.importorskip("skimage.data", reason="the photo is made from scikit-image's astronaut (eval extra)")
    seen = []
    real = wait_policy_ab.run_timed

    def spy(commands):
        (argv,) = commands
        env = dict(os.environ)  # what the timed process gets: env(1) applied to this process's environment
        if argv[1] == "-u":
            env.pop(argv[2], None)
        else:
            env.update([argv[1].split("=", 1)])
        seen.append(env.get("OMP_WAIT_POLICY"))
        return real(commands)

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own: kept here, not used for 'default'
    monkeypatch.setattr(wait_policy_ab, "run_timed", spy)
    assert wait_policy_ab.main(["--runs", "1", "--width", "48", "--height", "40", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "both policies wrote the same bytes" in out and "passive / default, pair by pair: median" in out
    assert sorted(seen, key=str) == [None, None, "PASSIVE", "PASSIVE"] and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_moe_denoise_waits_passively_unless_told_otherwise():
    """The CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads (on a busy 2-core machine, spinning threads made a
    photo 1.3 to 4x slower: docs/benchmarks.md); a policy or a spin count the user set is kept."""
    code = ("import contextlib, os\nfrom moe_denoise.cli import main\nwith contextlib.suppress(SystemExit):\n"
            "    main(['--version'])\nprint(os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    for given, expected in (({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                            ({"GOMP_SPINCOUNT": "300000"}, "unset")):  # a spin count given: OpenMP's own policy
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        done = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True,
                              timeout=60)
        assert done.stdout.split()[-1] == expected, done.stdout + done.stderr
