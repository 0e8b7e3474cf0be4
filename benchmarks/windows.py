"""A configuration's timed windows: each window is `steps` steps timed by
`patchup_tf.app.steptimer`, answered as per-step seconds, summarised by the
median."""

import statistics

from benchmarks.machine import peak_rss_mb, reset_peak_rss


def window_stats(answers, batch_size):
    """The row's figures from window answers `{"wall_s", "cpu_s"}` (per step)."""
    rates = [batch_size / a["wall_s"] for a in answers]
    cpu = [a["cpu_s"] for a in answers]
    median = statistics.median(rates) if rates else None
    return {"img_per_s": median,
            "step_ms": 1000.0 * batch_size / median if median else None,
            "img_per_s_best": max(rates) if rates else None,
            "img_per_s_windows": rates,
            "cpu_util_windows": [round(a["cpu_s"] / a["wall_s"], 2) for a in answers],
            "cpu_s_per_step": statistics.median(cpu) if cpu else None,
            "cpu_s_per_step_windows": cpu}


class Timed:
    """A bench (`time(steps) -> Timing`, `result()`, `batch_size`) and its windows.

    Each window starts from a reset peak RSS, so `peak_rss_mb` is the
    highest resident memory seen while timing.
    """

    def __init__(self, bench):
        self.bench, self.answers, self.peak_rss = bench, [], None

    def window(self, steps):
        """Times one window; its answer `{"img_per_s", "wall_s", "cpu_s", "peak_rss_mb"}`."""
        reset_peak_rss()
        timing = self.bench.time(steps)
        peak = peak_rss_mb()
        self.peak_rss = peak if self.peak_rss is None else max(self.peak_rss, peak)
        answer = {"img_per_s": self.bench.batch_size / timing.wall_s, "wall_s": timing.wall_s,
                  "cpu_s": timing.cpu_s, "peak_rss_mb": peak}
        self.answers.append(answer)
        return answer

    def row(self):
        return {**self.bench.result(), **window_stats(self.answers, self.bench.batch_size),
                "peak_rss_mb": self.peak_rss}
