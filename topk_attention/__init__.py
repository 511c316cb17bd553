"""The sparse top-k attention operator in every form, in one place (DESIGN.md section 3).

spec           identity of the plugin (name, namespace, version) shared by the ONNX graph, TensorRT and manifests
reference      the definition (masked threshold) and the seed's formulation, from moe_model
triton_kernel  the Triton kernel and its launcher (CUDA; TRITON_INTERPRET=1 on a CPU)
torch_op       torch.ops.moe_denoise.sparse_topk_attention, and the model's attention impl "triton"
aot            the ahead-of-time artifact: PTX plus its launch parameters, for a named GPU target
launch         the launch contract: launching an artifact through the CUDA driver as TensorRT does
trt_plugin     the TensorRT plugin (tensorrt.plugin), registered by register_plugin()
ort_op         the plugin node served in ONNX Runtime by the reference (onnxruntime-extensions)

Importing the package imports none of them; each backend (triton, tensorrt, onnxruntime) is imported only when
its form is used.
"""
