"""The machine a measurement ran on: CPUs, fingerprint, Jetson, load and clocks, memory,
NVML, power."""
