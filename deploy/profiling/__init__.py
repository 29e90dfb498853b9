"""Where the time goes: per-block latency tables (`deploy profile-blocks`) and per-node times."""
