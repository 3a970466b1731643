"""Print the README's Markdown tables from a bench_infer results file, so that published tables are the
measured numbers and nothing retyped.

    python -m benchmarks.tables benchmarks/results/infer.json
"""
import argparse

import utils


def markdown_table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]


def fixed_shape_table(rows: list) -> list:
    """One line per model x backend: latency per (batch, threads), then throughput and share of the peak at
    batch 32 with the most threads."""
    threads = sorted({r["threads"] for r in rows})
    batches = sorted({r["batch_size"] for r in rows})
    top = threads[-1]
    columns = [(b, t) for b in batches for t in threads]
    index = {(r["model"], r["backend"], r["batch_size"], r["threads"]): r for r in rows}
    header = (["model", "backend"] + [f"batch {b}, {t} thr (ms)" for b, t in columns]
              + [f"batch {batches[-1]}, {top} thr seq/s", f"% of peak (b{batches[-1]}, {top} thr)"])
    lines = []
    for model, backend in dict.fromkeys((r["model"], r["backend"]) for r in rows):
        last = index.get((model, backend, batches[-1], top))
        lines.append([model, backend] + [latency_cell(index.get((model, backend, b, t))) for b, t in columns]
                     + ([f"{last['sequences_per_second']:.1f}", f"{100 * last['peak_fraction']:.0f}%"] if last else ["", ""]))
    return markdown_table(header, lines)


def latency_cell(row) -> str:
    if row is None:
        return ""
    return f"{row['latency_ms']:.1f}" if row["latency_ms"] < 100 else f"{row['latency_ms']:.0f}"


def end_to_end_table(rows: list) -> list:
    header = ["model", "sentences", "threads", "sorted, padded per batch (seq/s)", "fixed 128 (seq/s)", "speedup"]
    return markdown_table(header, [[r["model"], str(r["sentences"]), str(r["threads"]), f"{r['sorted_sequences_per_second']:.0f}",
                                    f"{r['fixed_sequences_per_second']:.0f}", f"{r['speedup']:.2f}×"] for r in rows])


def batch_one_table(rows: list) -> list:
    header = ["model", "threads", "backend", "peak (GFLOP/s)", "bound p50 (ms)", "p50 (ms)", "× bound"]
    return markdown_table(header, [[r["model"], str(r["threads"]), r["backend"], f"{r['matmul_peak_gflops']:.0f}",
                                    f"{r['flops_bound_ms_p50']:.2f}", f"{r['latency_ms_p50']:.2f}",
                                    f"{r['latency_over_flops_bound_p50']:.2f}×"] for r in rows])


def tables(results: dict) -> list:
    real = results.get("real_data", [])
    sections = [("fixed shape, sequence length 128", fixed_shape_table, results.get("fixed_shape", [])),
                ("real TNEWS, end to end", end_to_end_table, [r for r in real if r["kind"] == "real TNEWS, end to end"]),
                ("real TNEWS, batch 1", batch_one_table, [r for r in real if r["kind"] == "real TNEWS, batch 1" and "flops_bound_ms_p50" in r])]  # older files lack it
    lines = [f"{results['machine']['cpu']} ({', '.join(results['machine']['flags'])}); fp32 matmul peak GFLOP/s by threads: "
             + ", ".join(f"{t}: {p:.0f}" for t, p in results["matmul_peak_gflops"].items())]
    for title, render, rows in sections:
        if rows:
            lines += ["", f"{title}:", ""] + render(rows)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a JSON file written by benchmarks.bench_infer")
    args = parser.parse_args(argv)
    results = utils.read_json_file(args.results, "results")
    if not isinstance(results, dict) or "machine" not in results:
        raise utils.UserError(f"{args.results}: not a results file written by benchmarks.bench_infer")
    print("\n".join(tables(results)))


if __name__ == "__main__":
    utils.run_cli(main)
