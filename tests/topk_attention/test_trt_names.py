"""Names of TensorRT's API: those our stand-in core defines and those the project touches must exist in the real
``tensorrt.so`` of each supported version; the project's TensorRT modules touch no TensorRT name that is not listed
in ``moe_base/trt_api.py``; the ``tensorrt.plugin`` names we use exist in the real plugin layer."""
import ast
import enum
import importlib.util
import inspect
import re
import subprocess
import sys
from functools import cache

from moe_base.trt_api import TENSORRT_NAMES, TENSORRT_PLUGIN_NAMES
from tools.trt_layer.drive import REPO
from tools.trt_layer.fetch import STANDIN, SUPPORTED, environment, layer_dir

TRT_MODULES = [REPO / "export" / "engine.py", REPO / "runtime" / "trt_runner.py",
               REPO / "topk_attention" / "trt_plugin.py"]
# attribute names that are also strings in tensorrt.so but, in these modules, belong to Python, NumPy or torch
# attributes of tensorrt.plugin objects (Python; exercised against the real layer by test_plugin_layer.py)
PLUGIN_LAYER_ATTRS = {"KernelLaunchParams", "grid_x", "grid_y", "block_x", "shared_mem", "is_constant",
                      "constant_value", "shape_expr", "like", "dtype"}
NOT_TENSORRT = {"cuda", "numpy", "update", "clear", "major", "minor", "float32", "int32", "__init__", "copy_",
                "name", "shape", "items", "get", "keys", "values", "append", "data", "encode", "read_bytes",
                "strip", "environ", "split", "size", "empty", "to"}


@cache
def so_strings(version: str) -> frozenset[str]:
    """The real tensorrt.so's printable strings (down to two characters: enum members such as "MIN" are short),
    plus the identifiers of the package's __init__.py, where a few names are defined in Python (nptype, volume)."""
    data = (layer_dir(version) / "tensorrt.so").read_bytes()
    strings = {m.group().decode() for m in re.finditer(rb"[\x20-\x7e]{2,}", data)}
    init = (layer_dir(version) / "__init__.py").read_text()
    return frozenset(strings | set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", init)))


def in_so(name: str, version: str) -> bool:
    """A name is in the binary as a string of its own or as the tail of a longer one: linkers merge string tails
    ("register_creator" lives inside "deregister_creator", "HWC" inside "DHWC", "INT8" inside "UINT8"). So a short
    name can be found by chance; the names our code calls are long enough for the check to mean something."""
    strings = so_strings(version)
    return name in strings or any(s.endswith(name) for s in strings)


def standin_names() -> set[str]:
    spec = importlib.util.spec_from_file_location("_tensorrt_standin", STANDIN / "tensorrt" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = set()
    for name in mod.__all__:
        names.add(name)
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            if issubclass(obj, enum.Enum):
                names |= set(obj.__members__)
            names |= {k for k in vars(obj) if not k.startswith("_")}
            try:
                names |= {k for k in vars(obj()) if not k.startswith("_")}
            except TypeError:
                pass
    return names


def test_standin_names_exist_in_tensorrt_so(version):
    missing = sorted(n for n in standin_names() if not in_so(n, version))
    assert not missing, f"the stand-in core defines names that TensorRT {version}'s tensorrt.so lacks: {missing}"


def test_listed_names_exist_in_tensorrt_so(version):
    major = version.split(".")[0]
    missing = [name for name, versions in TENSORRT_NAMES.items() if major in versions
               for part in name.split(".") if not in_so(part, version)]
    assert not missing, f"moe_base/trt_api.py lists names that TensorRT {version} lacks: {missing}"


def _trt_chains(tree: ast.AST, root: str) -> set[str]:
    """Dotted attribute chains starting at the name ``root`` (``trt.Logger.WARNING`` -> "Logger.WARNING")."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == root:
                chains.add(".".join(reversed(parts)))
    return {c for c in chains if not any(o != c and o.startswith(c + ".") for o in chains) or c in TENSORRT_NAMES}


def test_project_touches_only_listed_tensorrt_names(fetched_layer):
    known = set(TENSORRT_NAMES)
    known_attrs = {part for n in TENSORRT_NAMES for part in n.split(".")} | PLUGIN_LAYER_ATTRS
    strings = frozenset()
    for v in SUPPORTED.values():
        fetched_layer(v)
        strings |= so_strings(v)
    unlisted = []
    for path in TRT_MODULES:
        tree = ast.parse(path.read_text())
        for chain in _trt_chains(tree, "trt"):
            if chain not in known:
                unlisted.append(f"{path.name}: trt.{chain}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in strings and node.attr not in known_attrs
                    and node.attr not in NOT_TENSORRT and not node.attr.startswith("_")):
                unlisted.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not unlisted, ("TensorRT names used but not listed in moe_base/trt_api.py (add them, with the versions "
                          f"that need them, or to NOT_TENSORRT here if they are not TensorRT's): {sorted(set(unlisted))}")


def test_plugin_layer_names(version):
    used = _trt_chains(ast.parse(TRT_MODULES[2].read_text()), "trtp")
    assert {c.split(".")[0] for c in used} <= set(TENSORRT_PLUGIN_NAMES), used
    code = ("import json, tensorrt.plugin as p; "
            f"print(json.dumps([n for n in {list(TENSORRT_PLUGIN_NAMES)!r} if n not in p.__all__]))")
    res = subprocess.run([sys.executable, "-c", code], env=environment(version, REPO), cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", f"tensorrt.plugin {version} lacks {res.stdout}"


def test_the_name_check_can_fail(version):
    assert in_so("execute_async_v3", version) and in_so("register_creator", version)
    assert not in_so("execute_async_v4_made_up", version)
    # removed in TensorRT 11: found in 10.9's binary only
    assert in_so("get_plugin_creator", version) == version.startswith("10.")
