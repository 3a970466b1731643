"""Plot benchmarks/results/infer[_quick].json: batch-32 latency against model size (GFLOP per sequence), one line
per backend, at the largest thread count measured.

    python -m benchmarks.plot_results benchmarks/results/infer_quick.json benchmarks/results/infer_quick.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import runtime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("image")
    args = parser.parse_args(argv)
    results = runtime.read_json_file(args.results, "results")
    rows = [r for r in results.get("fixed_shape", []) if r["batch_size"] == 32] if isinstance(results, dict) else []
    if not rows:
        raise runtime.UserError(
            f"{args.results}: no fixed-shape batch-32 rows to plot (a bench_infer run with the fixed_shape part)"
        )
    threads = max(r["threads"] for r in rows)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        points = sorted(
            (r["gflop_per_sequence"], r["latency_ms"], r["model"])
            for r in rows
            if r["backend"] == backend and r["threads"] == threads
        )
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backend)
        for gflop, latency, model in points:
            axis.annotate(model, (gflop, latency), textcoords="offset points", xytext=(4, 4), fontsize=7)
    peak = results["matmul_peak_gflops"][str(threads)]
    axis.set_xlabel("GFLOP per sequence (128 tokens)")
    axis.set_ylabel("latency per batch of 32, ms")
    axis.set_title(
        f"ERNIE 3.0 shapes, {threads} threads, {results['machine']['cpu']} (matmul peak {peak:.0f} GFLOP/s)", fontsize=9
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.image, dpi=110)
    print(f"wrote {args.image}")


if __name__ == "__main__":
    runtime.run_cli(main)
