"""Speed benchmarks of patchup_tf, run from a source checkout (not installed):
`python -m benchmarks` (`benchmarks.run`, the driver), its presets
`benchmarks.gpu_bench` and `benchmarks.determinism_cost`, and
`benchmarks.profile_step`; `benchmarks/README.md` describes them."""
