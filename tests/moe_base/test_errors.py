"""moe_base.errors: how a stop is held and said."""
import signal

import pytest

from moe_base.errors import Interrupted, signals_held, stop_reason


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_waits_for_a_held_block_then_acts(signum):
    """A closed terminal's SIGHUP was not held: between the weights and their JSON (or a model and its manifest) it
    stopped the command at once, the first written and the second not."""
    def stop(got, frame):
        raise Interrupted("", got)

    previous = signal.signal(signum, stop)
    done = []
    try:
        with pytest.raises(Interrupted) as e, signals_held():
            signal.raise_signal(signum)
            done.append("the second file")
    finally:
        signal.signal(signum, previous)
    assert done == ["the second file"] and e.value.signum == signum


def test_each_stop_is_said_in_words():
    assert stop_reason(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert stop_reason(Interrupted("", signal.SIGTERM)) == "stopped by SIGTERM"
    assert stop_reason(Interrupted("", signal.SIGHUP)) == "stopped by SIGHUP (its terminal was closed)"
