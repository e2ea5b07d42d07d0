"""Data of the simulated runtime: the built ``librkllmrt-sim-<family>.so`` files and the demo
model ``demo.rkllm``. Use :mod:`rkllm.sim` to find them."""
