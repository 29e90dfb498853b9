"""Deploy: benchmark ONNX models on any device; needs no torch.

    import deploy
    runner = deploy.make_runner("onnxruntime", "model.onnx", threads=2)
    records = deploy.benchmark(runner, deploy.BenchConfig(batch_sizes=(1, 8)), "model")
    deploy.write_results("results.json", records, deploy.device_fingerprint())

Each public name is imported on first use: `import deploy` loads neither onnxruntime nor
TensorRT until a runner asks for it.
"""

from deploy.lazy import lazy_attributes

_API = {
    "deploy.errors": (
        "DeployConfigError",
        "DeployError",
        "DeployInputError",
        "EngineMismatchError",
        "MeasurementError",
        "MissingDependencyError",
    ),
    "deploy.runners": ("BACKENDS", "Runner", "make_runner"),
    "deploy.tensor_spec": ("TensorSpec",),
    "deploy.onnx_info": ("OnnxInfo", "inspect_onnx"),
    "deploy.records": ("BenchConfig", "LatencyRecord"),
    "deploy.bench": ("benchmark", "benchmark_side_by_side", "make_inputs"),
    "deploy.evaluate": ("LabelledData", "load_labelled", "save_labelled", "top1_accuracy"),
    "deploy.machine.fingerprint": ("device_fingerprint",),
    "deploy.machine.state": ("MachineMonitor",),
    "deploy.machine.power": ("open_power_sampler",),
    "deploy.tensorrt.options": ("BuildOptions",),
    "deploy.tensorrt.engine": ("build_engine", "plan_build"),
    "deploy.tensorrt.sidecar": ("load_engine_info",),
    "deploy.tensorrt.trtexec": ("run_trtexec",),
    "deploy.results.files": ("ResultFile", "read_results", "write_results"),
    "deploy.results.report": ("build_report",),
    "deploy.results.compare": ("compare_results",),
    "deploy.profiling.blocks_file": ("BlocksFile", "read_blocks"),
    "deploy.profiling.profile_blocks": ("profile_blocks",),
    "deploy.profiling.table": ("LatencyTable", "read_table", "write_table"),
    "deploy.profiling.node_times": ("onnxruntime_node_times",),
}
__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
del lazy_attributes  # the helper is not part of the API
