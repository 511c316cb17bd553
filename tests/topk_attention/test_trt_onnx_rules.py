"""Our plugin graph against the rules by which TensorRT's ONNX parser turns a node into a plugin.

From onnx-tensorrt (read at github.com/onnx/onnx-tensorrt):
  * ``ModelImporter.cpp`` (parseNode): a node whose op type has a builtin importer is imported by it, whatever
    its domain; one named like a local function becomes that function; any other goes to
    ``FallbackPluginImporter``.
  * ``onnxOpImporters.cpp`` (FallbackPluginImporter): the creator is looked up by (op type, the STRING attribute
    ``plugin_version``, default "1", the STRING attribute ``plugin_namespace``, default "").
  * ``onnxOpImporters.cpp`` (loadFields): for each field name the creator declares, in its order, the node's
    attribute of that name becomes a field: INT -> kINT32, FLOAT -> kFLOAT32, STRING -> kCHAR; a missing one
    is left out with a warning (the plugin would then not get it).
  * ``importerUtils.cpp`` (createPlugin, V3 quick creators): the plugin is created with the op type as its name,
    ``plugin_namespace`` as its namespace, and kSTRICT_AOT when the INT attribute ``aot`` is 1 (kSTRICT_JIT for 0).
"""
import pytest

onnx = pytest.importorskip("onnx", reason="the plugin graph is written with onnx: pip install 'moe-denoise[onnx]'")

from export.onnx_export import ExportOptions, build_onnx  # noqa: E402
from moe_model import SmallViT  # noqa: E402
from topk_attention.spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION  # noqa: E402

CONTROL = {"plugin_version": onnx.AttributeProto.STRING, "plugin_namespace": onnx.AttributeProto.STRING,
           "aot": onnx.AttributeProto.INT}
PARSER_FIELD_TYPE = {onnx.AttributeProto.INT: "INT32", onnx.AttributeProto.FLOAT: "FLOAT32",
                     onnx.AttributeProto.STRING: "CHAR"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("preset", ["seed", "residual_refine_wide"])
def test_plugin_nodes_follow_the_parser_rules(precision, preset, report):
    model = build_onnx(SmallViT(preset), ExportOptions(flavor="plugin", precision=precision))
    creator_fields = report["nodes"][0]["creator"]["fields"]  # (name, type) as TensorRT's layer declares them
    custom = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    assert custom, "the plugin graph has no plugin node"
    assert not model.functions, "a local function could shadow the plugin's op type"
    assert {o.domain for o in model.opset_import} >= {PLUGIN_NAMESPACE}
    for node in custom:
        assert node.op_type == PLUGIN_NAME and node.domain == PLUGIN_NAMESPACE
        # a builtin importer would take the node whatever its domain: the op type must not be a standard op
        assert not onnx.defs.has(node.op_type)
        assert len(node.input) == 3 and len(node.output) == 1
        attrs = {a.name: a for a in node.attribute}
        for name, kind in CONTROL.items():
            assert attrs[name].type == kind, f"{name} must be {onnx.AttributeProto.AttributeType.Name(kind)}"
        assert attrs["plugin_version"].s.decode() == PLUGIN_VERSION
        assert attrs["plugin_namespace"].s.decode() == PLUGIN_NAMESPACE
        assert attrs["aot"].i == 1  # strict AOT: the engine embeds the kernel and needs no Python
        fields = {k: v for k, v in attrs.items() if k not in CONTROL}
        # every field the creator declares is on the node (none left out), with the type the parser gives it
        assert set(fields) == {name for name, _ in creator_fields}
        for name, field_type in creator_fields:
            assert PARSER_FIELD_TYPE[fields[name].type] == field_type, (name, field_type)
        assert not set(CONTROL) & {name for name, _ in creator_fields}  # control attributes are not fields
        assert fields["topk"].i < 64  # only sparse experts (k < N) become plugin nodes
