"""Speed benchmarks of patchup_tf, run from a source checkout (not installed).

`python -m benchmarks --help` is the train-step / input-pipeline benchmark
(`benchmarks.run`); `python -m benchmarks.gpu_bench` times one GPU within a
time budget. The modules, one job each: `machine` (the machine's facts),
`configs` (what to time), `synthetic` (made-up inputs), `traces` (retrace
counts), `train_bench` (a built, warmed patchup_tf model to time),
`windows` (timed windows and their medians), `workers` (the worker
processes and their pipe protocol), `interleave` (windows interleaved
across workers, isolated runs), `tf_worker` and
`torch_original` (the two kinds of worker), `pipeline` and `mix_ops` (the
input pipeline and PatchUp's own ops alone), `ratios`, `report` (the table
and JSON). Every step is timed by `patchup_tf.app.steptimer`.
"""
