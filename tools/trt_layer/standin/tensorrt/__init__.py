"""A minimal stand-in for TensorRT's compiled core (``tensorrt.so``), under TensorRT's own Python plugin layer.

TensorRT's bindings wheel holds two things: ``tensorrt.so`` (needs libnvinfer, which cannot be installed on a
machine without an NVIDIA driver) and ``plugin/``, the pure-Python ``tensorrt.plugin`` package. This module
is ``import tensorrt`` for that real plugin package: it provides only the enums, classes and registry the
plugin layer touches, and appends the unpacked wheel's folder (``MOE_TRT_PLUGIN_LAYER``) to this package's
``__path__``, so ``import tensorrt.plugin`` runs NVIDIA's code, unchanged. Every public name here (module
attributes, enum members, class attributes) must exist in the real ``tensorrt.so`` of each supported version;
tests/topk_attention/test_trt_names.py checks that against the strings of those files.

What the compiled core does that matters here is modelled faithfully: a PluginField keeps raw bytes of its
declared type (reading ``.data`` gives a NumPy array of that type, as the C++ field's pointer and length do),
and shape expressions are symbolic trees that the driver can evaluate for a concrete batch size.
"""
import enum
import os
from typing import Any

import numpy as np

__version__ = os.environ.get("MOE_TRT_PLUGIN_LAYER_VERSION", "0.0.0")
_LAYER = os.environ.get("MOE_TRT_PLUGIN_LAYER")
if _LAYER:  # tensorrt.plugin comes from the real wheel
    __path__.append(_LAYER)  # noqa: F821 - a package's __path__

__all__ = ["ILogger", "Logger", "DataType", "float32", "float16", "int8", "int32", "int64", "uint8", "bfloat16", "bool",
           "nptype", "TensorFormat", "TensorRTPhase", "QuickPluginCreationRequest", "PluginFieldType", "PluginField",
           "PluginFieldCollection", "DimensionOperation", "IDimensionExpr", "IExprBuilder", "Dims", "DimsExprs",
           "PluginTensorDesc", "DynamicPluginTensorDesc", "PluginArgType", "PluginArgDataType", "ISymExpr",
           "ISymExprs", "KernelLaunchParams", "ITensor", "IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild",
           "IPluginV3QuickRuntime", "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "IPluginRegistry",
           "get_plugin_registry", "__version__"]


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = ILogger.Severity

    def __init__(self, min_severity: "ILogger.Severity" = ILogger.Severity.WARNING) -> None:
        self.min_severity = min_severity
        self._messages: list[tuple[int, str]] = []

    def log(self, severity: "ILogger.Severity", msg: str) -> None:
        self._messages.append((int(severity), msg))


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


float32, float16, int8, int32, int64, uint8, bfloat16 = (DataType.FLOAT, DataType.HALF, DataType.INT8,
                                                           DataType.INT32, DataType.INT64, DataType.UINT8, DataType.BF16)
bool = DataType.BOOL  # noqa: A001 - tensorrt.bool is TensorRT's name


def nptype(trt_type: DataType) -> type:
    mapping = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
               DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
    if trt_type in mapping:
        return mapping[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


class TensorFormat(enum.IntEnum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


class TensorRTPhase(enum.IntEnum):
    BUILD = 0
    RUNTIME = 1


class QuickPluginCreationRequest(enum.IntEnum):
    UNKNOWN = 0
    PREFER_JIT = 1
    PREFER_AOT = 2
    STRICT_JIT = 3
    STRICT_AOT = 4


class PluginFieldType(enum.IntEnum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12


_FIELD_DTYPES = {PluginFieldType.FLOAT16: np.float16, PluginFieldType.FLOAT32: np.float32,
                 PluginFieldType.FLOAT64: np.float64, PluginFieldType.INT8: np.int8, PluginFieldType.INT16: np.int16,
                 PluginFieldType.INT32: np.int32, PluginFieldType.INT64: np.int64, PluginFieldType.CHAR: np.int8,
                 PluginFieldType.UNKNOWN: np.uint8}


class PluginField:
    """A named buffer of a declared element type: raw bytes in, a NumPy array of that type out."""

    def __init__(self, name: str = "", data: Any = None, type: PluginFieldType = PluginFieldType.UNKNOWN) -> None:  # noqa: A002
        self.name = name
        self.type = PluginFieldType(type)
        raw = b"" if data is None else (bytes(data) if isinstance(data, (bytes, bytearray)) else
                                         np.ascontiguousarray(data).tobytes())
        self._raw = raw
        self.size = len(raw) // np.dtype(_FIELD_DTYPES[self.type]).itemsize

    @property
    def data(self) -> np.ndarray:
        return np.frombuffer(self._raw, dtype=_FIELD_DTYPES[self.type]).copy()


class PluginFieldCollection(list):
    """The fields handed to a creator, in order."""


class DimensionOperation(enum.IntEnum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


_OPS = {DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
        DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: lambda a, b: a - b,
        DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
        DimensionOperation.FLOOR_DIV: lambda a, b: a // b, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b)}


class IDimensionExpr:
    """A symbolic dimension: a constant, a named symbol (e.g. the batch), or an operation on two expressions."""

    def __init__(self, value: int | None = None, symbol: str | None = None,
                 op: DimensionOperation | None = None, args: tuple["IDimensionExpr", ...] = ()) -> None:
        self._value, self._symbol, self._op, self._args = value, symbol, op, args

    def is_constant(self) -> "_bool":
        return self._symbol is None and all(a.is_constant() for a in self._args)

    def get_constant_value(self) -> int:
        if not self.is_constant():
            raise RuntimeError("not a build-time constant")
        return _evaluate(self, {})

    def is_size_tensor(self) -> "_bool":
        return False


_bool = type(True)


def _evaluate(expr: IDimensionExpr, symbols: dict[str, int]) -> int:
    """Value of ``expr`` for concrete symbols (not TensorRT's API: how the driver reads launch parameters)."""
    if expr._symbol is not None:
        return int(symbols[expr._symbol])
    if expr._op is None:
        return int(expr._value)
    a, b = (_evaluate(x, symbols) for x in expr._args)
    return int(_OPS[expr._op](a, b))


def _symbol(name: str) -> IDimensionExpr:
    """A named runtime dimension (not TensorRT's API: TensorRT makes these from the optimisation profile)."""
    return IDimensionExpr(symbol=name)


class IExprBuilder:
    """Builds shape expressions during shape calculation and launch-parameter queries."""

    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr(value=int(value))

    def operation(self, op: DimensionOperation, first: IDimensionExpr, second: IDimensionExpr) -> IDimensionExpr:
        return IDimensionExpr(op=DimensionOperation(op), args=(first, second))

    def declare_size_tensor(self, output_index: int, opt: IDimensionExpr, upper: IDimensionExpr) -> IDimensionExpr:
        return IDimensionExpr(symbol=f"size_tensor_{output_index}")


class Dims(list):
    MAX_DIMS = 8

    def __init__(self, shape: Any = ()) -> None:
        super().__init__([0] * shape if isinstance(shape, int) else [int(s) for s in shape])


class DimsExprs(list):
    def __init__(self, n: Any = 0) -> None:
        super().__init__([None] * n if isinstance(n, int) else list(n))


class PluginTensorDesc:
    def __init__(self) -> None:
        self.dims = Dims()
        self.type = DataType.FLOAT
        self.format = TensorFormat.LINEAR
        self.scale = 1.0


class DynamicPluginTensorDesc:
    def __init__(self) -> None:
        self.desc = PluginTensorDesc()
        self.min = Dims()
        self.opt = Dims()
        self.max = Dims()


class PluginArgType(enum.IntEnum):
    INT = 0


class PluginArgDataType(enum.IntEnum):
    INT8 = 0
    INT16 = 1
    INT32 = 2


class ISymExpr:
    def __init__(self) -> None:
        self.type = PluginArgType.INT
        self.dtype = PluginArgDataType.INT32
        self.expr: IDimensionExpr | None = None


class ISymExprs:
    """Where an AOT plugin writes its extra kernel arguments."""

    def __init__(self) -> None:
        self.nbSymExprs = 0
        self._exprs: dict[int, ISymExpr] = {}

    def __setitem__(self, index: int, expr: ISymExpr) -> None:
        if not 0 <= index < self.nbSymExprs:
            raise IndexError(f"symbolic expression {index} of {self.nbSymExprs}")
        self._exprs[index] = expr

    def __getitem__(self, index: int) -> ISymExpr:
        return self._exprs[index]

    def __len__(self) -> int:
        return self.nbSymExprs


class KernelLaunchParams:
    """Where an AOT plugin writes its grid, block and shared memory (each an ISymExpr)."""

    def __init__(self) -> None:
        self.grid_x = self.grid_y = self.grid_z = None
        self.block_x = self.block_y = self.block_z = None
        self.shared_mem = None


class ITensor:
    pass


class IPluginV3:
    def __init__(self) -> None:
        pass


class IPluginV3QuickCore:
    def __init__(self) -> None:
        pass


class IPluginV3QuickBuild:
    def __init__(self) -> None:
        pass


class IPluginV3QuickRuntime:
    def __init__(self) -> None:
        pass


class IPluginV3QuickAOTBuild:
    def __init__(self) -> None:
        pass


class IPluginCreatorV3Quick:
    def __init__(self) -> None:
        pass


class IPluginRegistry:
    """Creators by (name, version, namespace), as TensorRT's registry keeps them."""

    def __init__(self) -> None:
        self._creators: dict[tuple[str, str, str], Any] = {}

    def register_creator(self, creator: Any, plugin_namespace: str = "") -> "_bool":
        key = (creator.name, creator.plugin_version, creator.plugin_namespace)
        if key in self._creators:
            return False
        self._creators[key] = creator
        return True

    def get_creator(self, name: str, version: str, plugin_namespace: str = "") -> Any:
        return self._creators.get((name, version, plugin_namespace))

    @property
    def all_creators(self) -> list[Any]:
        return list(self._creators.values())


_REGISTRY = IPluginRegistry()


def get_plugin_registry() -> IPluginRegistry:
    return _REGISTRY
