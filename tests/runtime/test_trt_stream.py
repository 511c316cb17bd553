"""The TensorRT runner's device call is ordered on the caller's CUDA stream (GPU only; TensorRT not needed).

The engine's execution context is replaced by one that does what an engine does with its stream argument: it
enqueues work there (a long spin, then output = input + 1). If the runner enqueued on a stream of its own, the
work would start before the input is written and CUDA events recorded on the caller's stream would not wait for
it: the checks below fail in exactly that case.
"""
import pytest

from runtime.trt_runner import TensorRTRunner

pytestmark = pytest.mark.gpu


class SpinningContext:
    """Stands in for IExecutionContext: execute_async_v3 enqueues real GPU work on the stream it is given."""

    def __init__(self, torch, spin_cycles: int) -> None:
        self.torch, self.spin, self.addresses = torch, spin_cycles, {}

    def set_input_shape(self, name, shape):
        self.shape = shape

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream_handle: int) -> bool:
        torch = self.torch
        with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)):
            torch.cuda._sleep(self.spin)
            self.y.copy_(self.x + 1)
        return True


def make_runner(torch, x, y, spin):
    runner = TensorRTRunner("unused.engine", check_manifest=False)
    runner.context = SpinningContext(torch, spin)
    runner.context.x, runner.context.y = x, y
    runner.input_name, runner.output_name = "input", "output"
    return runner


def test_device_call_waits_for_its_input_and_is_covered_by_events():
    import torch

    x = torch.zeros(64, 3, 32, 32, device="cuda")
    y = torch.full_like(x, -1.0)
    runner = make_runner(torch, x, y, spin=50_000_000)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(), torch.cuda.Event()
    torch.cuda._sleep(50_000_000)  # the input is produced late on the caller's stream
    x.fill_(2.0)
    start.record()
    runner.device_call(x, y)
    end.record()
    end.synchronize()  # waits for the caller's stream only: the engine's spin must be behind this event
    # y = 3 proves both: the engine read x after fill_ (else 1), and finished before the end event (else -1)
    assert torch.equal(y, torch.full_like(x, 3.0)), f"y holds {y.unique().tolist()}, expected [3.0]"
