"""The lowest layer: what every package of the toolkit shares. NumPy and the standard library only.

errors      one root (ToolkitError), a type per kind of problem, and what refusals share (repeated, signals_held)
optional    optional heavy imports: ``require("tensorrt")`` or a MissingBackendError naming what to install
fileio      atomic file writes and hashing
manifest    the manifest every artifact carries, and the checks against it
tolerances  the one tolerance table, keyed by (backend, precision)
config      the model's architecture (ModelConfig) and its named presets
contract    the model's I/O contract: tensor names and tile shape
machine     the description of this machine and its libraries
metrics     PSNR from a mean squared error
trt_api     every TensorRT name the project touches
paths       the cache folder (MOE_DENOISE_CACHE) and the default names of exported artifacts in it
progress    progress of long work: a bar on a terminal, a line per step in a log
"""
