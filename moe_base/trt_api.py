"""Every name of TensorRT's Python API this project touches, in one place, with the versions that need it.

``tests/trt_layer/test_names.py`` checks each name against the strings of the real ``tensorrt.so`` of every
supported version (the oldest, 10.9, and the newest), and checks that the modules using TensorRT touch no
TensorRT name missing from this list. Names of ``tensorrt.plugin`` (pure Python) are checked against that
package itself. Polygraphy's own use of TensorRT is NVIDIA's to keep right, and is not listed here.

Keys are dotted paths from the module (``Logger.WARNING``) or from the object a call returns (the method names
of builder configs, engines and execution contexts); values are the major versions that use the name (a name
TensorRT removed, such as ``BuilderFlag.FP16`` in 11, where networks are strongly typed, would be listed for "10"
only).
"""

ALL = ("10", "11")

TENSORRT_NAMES: dict[str, tuple[str, ...]] = {
    # the module
    "__version__": ALL,
    "Logger": ALL,
    "Logger.WARNING": ALL,
    "init_libnvinfer_plugins": ALL,
    "get_plugin_registry": ALL,
    "IPluginRegistry.get_creator": ALL,
    "float16": ALL,                      # the plugin's AOT kernel: fp16 or fp32 inputs
    "MemoryPoolType.WORKSPACE": ALL,     # engine build: workspace limit
    # the engine build (export/engine.py; parsing and the builder config go through Polygraphy)
    "INetworkDefinition.get_input": ALL,
    "IBuilderConfig.create_timing_cache": ALL,
    "IBuilderConfig.set_timing_cache": ALL,
    "IBuilderConfig.get_timing_cache": ALL,
    "ITimingCache.serialize": ALL,
    # the runner (runtime/trt_runner.py)
    "Runtime": ALL,
    "Runtime.deserialize_cuda_engine": ALL,
    "ICudaEngine.create_execution_context": ALL,
    "ICudaEngine.num_io_tensors": ALL,
    "ICudaEngine.get_tensor_name": ALL,
    "ICudaEngine.get_tensor_mode": ALL,
    "ICudaEngine.get_tensor_profile_shape": ALL,
    "TensorIOMode.INPUT": ALL,
    "TensorIOMode.OUTPUT": ALL,
    "IExecutionContext.set_input_shape": ALL,
    "IExecutionContext.set_tensor_address": ALL,
    "IExecutionContext.execute_async_v3": ALL,
}

# tensorrt.plugin (TensorRT's pure-Python plugin layer) names used by topk_attention/trt_plugin.py
TENSORRT_PLUGIN_NAMES: tuple[str, ...] = ("register", "autotune", "aot_impl", "impl", "TensorDesc", "Tensor",
                                          "AutoTuneCombination", "KernelLaunchParams", "SymIntExprs", "SymInt32")
