"""TensorRT: engines and their sidecars, version rules, trtexec and its output."""
