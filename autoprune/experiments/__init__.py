"""The pipelines behind the commands (``run_<command>(config)``), and the experiments over allocators:
the compare loop, its report and every figure."""
