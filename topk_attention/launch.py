"""The launch contract of the AOT kernel: launching an artifact through the CUDA driver as TensorRT does.

A TensorRT AOT plugin hands TensorRT a PTX kernel, a grid, a block, the dynamic shared memory and a list of extra
int32 arguments; TensorRT then loads the PTX with the driver and launches it with the arguments in the order
inputs, extras, outputs. ``CudaDriver`` makes exactly those driver calls (libcuda through ctypes: module load,
shared-memory opt-in above 48 KiB, ``cuLaunchKernel``), so the same launch can be checked on a GPU without
TensorRT; ``plugin_args`` lays out an artifact's arguments in that order.
"""
import ctypes
from typing import Any


class CudaDriver:
    """The few CUDA driver calls a TensorRT AOT plugin launch amounts to, through ctypes (libcuda)."""

    MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    LOCAL_SIZE, NUM_REGS = 3, 4  # CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, CU_FUNC_ATTRIBUTE_NUM_REGS

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            raise RuntimeError(f"{what} failed: CUresult {rc} ({(name.value or b'?').decode()})")

    def version(self) -> int:
        v = ctypes.c_int()
        self._check(self.lib.cuDriverGetVersion(ctypes.byref(v)), "cuDriverGetVersion")
        return v.value

    def ensure_context(self, device_index: int) -> None:
        ctx = ctypes.c_void_p()
        self._check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:  # torch normally made the primary context current already
            dev = ctypes.c_int()
            self._check(self.lib.cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
            self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
            self._check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")

    def launch(self, ptx: str, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int,
               args: list[tuple[str, int]]) -> dict[str, int]:
        """Load PTX (driver JIT), set the shared-memory opt-in if needed, cuLaunchKernel, synchronise."""
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.lib.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(ptx.encode() + b"\0")),
                    "cuModuleLoadData (driver JIT of the PTX)")
        try:
            self._check(self.lib.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), "cuModuleGetFunction")
            if shared > 48 * 1024:
                self._check(self.lib.cuFuncSetAttribute(fn, self.MAX_DYNAMIC_SHARED, shared), "cuFuncSetAttribute")
            store = [ctypes.c_uint64(val) if kind == "u64" else ctypes.c_int32(val) for kind, val in args]
            params = (ctypes.c_void_p * len(store))(*[ctypes.cast(ctypes.byref(s), ctypes.c_void_p) for s in store])
            self._check(self.lib.cuLaunchKernel(fn, *grid, *block, shared, None, params, None), "cuLaunchKernel")
            self._check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")
            attrs = {}
            for key, attr in (("num_regs", self.NUM_REGS), ("local_bytes", self.LOCAL_SIZE)):
                val = ctypes.c_int()
                self._check(self.lib.cuFuncGetAttribute(ctypes.byref(val), attr, fn), "cuFuncGetAttribute")
                attrs[key] = val.value
            return attrs
        finally:
            self.lib.cuModuleUnload(mod)


def plugin_args(art: Any, tensors: dict[str, Any], batch: int) -> list[tuple[str, int]]:
    """Kernel arguments in the artifact's order: pointers, int32 extras, hidden params as null pointers."""
    extras = iter(art.extra_arg_values(batch))
    out = []
    for p in art.params:
        if p.kind in ("input", "output"):
            out.append(("u64", tensors[p.name].data_ptr()))
        elif p.kind == "extra":
            out.append(("i32", next(extras)))
        else:  # hidden scratch pointer, unused by this kernel
            out.append(("u64", 0))
    return out


