"""OpenMP's wait policy: torch's CPU threads waiting passively (``OMP_WAIT_POLICY=PASSIVE``, what `moe-denoise` sets
unless told otherwise) against OpenMP's own default (they spin a while first), for a whole photo.

    python -m tools.wait_policy_ab --runs 6 --work /tmp/wait_policy_ab            # this machine as it is
    python -m tools.wait_policy_ab --runs 6 --busy 1 --work /tmp/wait_policy_ab   # with one busy process beside

Makes one photo (scikit-image's astronaut resized to --width x --height, Gaussian noise of 25/255, PNG) and denoises
it with the shipped blind weights through ``runtime.photo.denoise_file`` (what `moe-denoise denoise` runs), each
time as a whole process, the two policies in turn (A, B, then B, A, ...: a drift of the machine's load hits both).
Prints each policy's median wall time, the ratio pair by pair, and the other processes' share of the CPU while it
ran (spinning costs most on a machine shared with other work, where a spinning thread holds a core another needs).
``--busy N`` starts N processes that only spin for the time of the timing, a machine shared with other work made
repeatable. Checks that both write the same bytes. Needs the `eval` extra (scikit-image).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import run_tool
from .ab_timing import interleaved, pairwise, run_count, run_timed, spread

DENOISE = ("import sys; from runtime import TorchRunner; from runtime.photo import denoise_file; "
           "denoise_file(sys.argv[1], sys.argv[2], TorchRunner('blind'), overwrite=True, progress=False)")


def main(argv: list[str] | None = None) -> int:
    from moe_denoise.commands import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=run_count, default=5, help="timed pairs (after one untimed pair); 0: compare only")
    parser.add_argument("--width", type=positive_int, default=512)
    parser.add_argument("--height", type=positive_int, default=512)
    parser.add_argument("--work", type=Path, default=Path("wait_policy_ab"), help="folder for the photo and outputs")
    parser.add_argument("--busy", type=run_count, default=0, help="processes that spin beside the timing (0: none)")
    args = parser.parse_args(argv)
    from benchmarks.env import CpuContention

    from .tile_batch_ab import make_photo

    photo = make_photo(args.work / "photo.png", args.width, args.height)
    outputs = {"passive": args.work / "passive.png", "default": args.work / "default.png"}

    policies = {"passive": ["OMP_WAIT_POLICY=PASSIVE"], "default": ["-u", "OMP_WAIT_POLICY"]}  # env(1)'s words

    def way(policy: str):
        return lambda: run_timed([["env", *policies[policy], sys.executable, "-c", DENOISE, str(photo),
                                   str(outputs[policy])]])[0]

    print(f"photo: {args.width}x{args.height} RGB, noise 25/255; {args.runs} timed pairs after one untimed pair; torch "
          f"threads: its default ({os.cpu_count()} logical CPUs here); {args.busy} spinning process(es) beside")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        busy = CpuContention(children=True)  # the timed processes are this run's (the spinners are not waited yet)
        seconds = interleaved({"passive": way("passive"), "default": way("default")}, args.runs)
        load = busy.result()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if outputs["passive"].read_bytes() != outputs["default"].read_bytes():
        raise SystemExit("the two policies wrote different bytes")
    print("both policies wrote the same bytes")
    if args.runs:
        for name, values in seconds.items():
            print(f"  {name:8s} wall s: {spread(values, '.2f')}")
        print(f"  passive / default, pair by pair: {pairwise(seconds['passive'], seconds['default'])}")
    if load:
        print(f"  other processes used {load['other_processes_cpu_fraction']:.0%} of the CPU meanwhile")
    return 0


if __name__ == "__main__":
    run_tool(main)
