"""The Markdown table and the summary of a :mod:`harness.bench.gpu_check.check` result."""
from __future__ import annotations

from typing import Any

from harness.bench.gpu_check.models import SHAPES


NOTES = """\
- *Ours*: native-length Whisper input from encoder frames cached before training, batches of 4 x the mean duration in
  seconds bucketed by length, the LM head at labelled positions only, the prompt prefix computed once and shared.
  *Reference*: 30-s padded input encoded at every step, batches of 4 utterances of random lengths, full-vocabulary
  logits, the prefix in every row. Both from the same projector weights; random weights, synthetic audio.
- *Useful FLOPs* (`harness/bench/flops.py`): the recipe's model FLOPs over real tokens; the percentage is of the dense
  matmul rate measured in the same process (bf16 on CUDA), sampled before, between and after the two variants.
"""


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The checks at a glance: every section's status, and the pass/fail facts the run is for."""
    secs = r["sections"]
    out: dict[str, Any] = {"status": {n: s.get("status") for n, s in secs.items()}}
    for name, s in secs.items():
        kind, _, shape = name.partition(":")
        if kind == "measure" and "decode" in s:
            out[f"identical_transcripts:{shape}"] = s["decode"]["identical_transcripts"]
        if kind == "measure" and "train" in s:
            out[f"train_speedup:{shape}"] = s["train"]["speedup"]
        if kind == "numerics" and "result" in s:
            out["numerics_passed"] = s["result"]["passed"]
        if kind == "distributed" and "result" in s:
            out["distributed"] = {k: v.get("passed") for k, v in s["result"].items()} | {"backend": s["setup"]["backend"]}
    out["all_ok"] = bool(secs) and all(s.get("status") == "ok" for s in secs.values())
    return out


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _flops_unit(rate: float) -> tuple[float, str]:
    return (1e12, "TFLOP/s") if rate >= 1e12 else (1e9, "GFLOP/s")


def _mem(p: dict[str, Any]) -> str:
    return f"{p['cuda_peak_gb']:.1f} GB (CUDA)" if "cuda_peak_gb" in p else f"{p['peak_rss_gb']:.2f} GB (RSS, process)"


def _measure_rows(label: str, s: dict[str, Any]) -> list[str]:
    rows = []
    if "params" in s:
        p = s["params"]
        rows.append(f"| {label} | built with random weights (s, first imports included); parameters encoder / projector / LLM | {_num(s['build_seconds'], 1)} | "
                    f"{_count(p['encoder'])} / {_count(p['projector'])} / {_count(p['llm'])} | |")
    if "train" in s:
        t = s["train"]
        o, ref, mm = t["ours"], t["reference"], t["matmul"]
        scale, unit = _flops_unit(mm["flops_per_second"])
        tf = lambda v: f"{v['useful_flops_per_second'] / scale:.2f} ({100 * v['useful_flops_fraction']:.0f}%)"  # noqa: E731
        rows += [
            f"| | training, audio s per s ({o['timed_steps']} / {ref['timed_steps']} timed steps) | {o['audio_sec_per_sec']:.1f} | "
            f"{ref['audio_sec_per_sec']:.1f} | {t['speedup']:.2f}x |",
            f"| | training, s per step (utterances per batch) | {o['seconds_per_step']:.3f} ({o['utterances_per_batch']:.1f}) | "
            f"{ref['seconds_per_step']:.3f} ({ref['utterances_per_batch']:.1f}) | |",
            f"| | useful {unit} (% of the {mm['dtype']} matmul rate in this process, {mm['n']}^2: {mm['flops_per_second'] / scale:.1f}) | "
            f"{tf(o)} | {tf(ref)} | |",
            f"| | executed {unit} (prompt prefix once per batch) | {o['executed_flops_per_second'] / scale:.2f} "
            f"({100 * o['executed_flops_fraction']:.0f}%) | | |",
            f"| | peak memory, training | {_mem(o)} | {_mem(ref)} | |",
        ]
    if "decode" in s:
        d = s["decode"]
        same = "identical" if d["identical_transcripts"] else f"DIFFER in {len(d['differing'])} of {d['compared']}"
        rows += [f"| | greedy decoding ({d.get('precision', '')}), {d['utterances']} utterances (utt/s): batch {d['batch_size']} vs one by one | "
                 f"{d['batched']['utterances_per_second']:.2f} | {d['one_by_one']['utterances_per_second']:.2f} ({d['compared']} decoded) | "
                 f"{d['speedup']:.2f}x, transcripts {same} ({d['distinct_hypotheses']} distinct) |",
                 f"| | peak memory, decoding | {_mem(d)} | | |"]
    return rows


def _numerics_rows(label: str, s: dict[str, Any]) -> list[str]:
    if "result" not in s:
        return []
    n, st = s["result"], s["setup"]
    return [f"| {label} | {st['steps']} training steps, {st['tested']} vs {st['reference']}: max loss rel. diff; min gradient cosine; "
            f"update rel. diff | {max(n['loss_rel_diff']):.2e}; {min(n['grad_cosine']):.5f}; {n['update_rel_diff']:.3f} | "
            f"tolerance: loss <= {st['loss_rtol']}, cosine >= {st['grad_cosine_min']} | {'passed' if n['passed'] else 'FAILED'} |"]


def _compile_rows(label: str, s: dict[str, Any]) -> list[str]:
    rows = []
    if "eager_shared_prefix" in s:
        e1, e2 = s["eager_shared_prefix"], s["eager_prefix_per_row"]
        rows.append(f"| {label} | training s per step, eager: shared prefix / prefix per row | {e1['seconds_per_step']:.3f} | "
                    f"{e2['seconds_per_step']:.3f} | |")
    if "compiled" in s:
        c = s["compiled"]
        rows.append(f"| | torch.compile ({s.get('backend', 'inductor')}) on ({c['timed_steps']} timed steps; first steps {', '.join(f'{x:.1f}' for x in c['warmup_seconds'])} s) "
                    f"vs off (prefix per row, as compiled code runs) | {c['seconds_per_step']:.3f} | {e2['seconds_per_step']:.3f} | "
                    f"{c['speedup_vs_eager_prefix_per_row']:.2f}x ({c['speedup_vs_eager_shared_prefix']:.2f}x vs shared prefix); "
                    f"loss max rel. diff {c['loss_max_rel_diff_vs_eager']:.1e}; {c['unique_graphs']} graphs, {c['graph_breaks']} graph breaks |")
    return rows


def _distributed_rows(label: str, s: dict[str, Any]) -> list[str]:
    rows = [f"| {label} | {s['setup']['note']} | | | |"] if "setup" in s else []
    for k, v in s.get("result", {}).items():
        if "error" in v:
            rows.append(f"| | {k.upper()} ({v.get('backend')}) | | | FAILED: {v['error'][:200]} |")
            continue
        errs = max(v["grad_rel_err_per_rank"].values())
        rows.append(f"| | {k.upper()} ({v['backend']}, {v['ranks']} ranks): step s; LLM parameters per rank of all; "
                    f"gradient rel. err vs whole batch | {v['step_seconds']:.3f}; {_count(v['llm_params_per_rank'])} of "
                    f"{_count(v['llm_params'])}; {errs:.1e} | | {'passed' if v['passed'] else 'FAILED'} |")
    return rows


def _header(r: dict[str, Any]) -> str:
    m = r["machine"]
    if m.get("cuda_available") and r["mode"] == "gpu":
        where = (f"{m['card']} ({m['gpu_count']} GPU{'s' if m['gpu_count'] > 1 else ''}, {m['gpu_memory_gib']:.0f} GiB, "
                 f"{m['capability']}), driver {m.get('driver') or 'unknown'}, CUDA {m['cuda']}, cuDNN {m['cudnn']}")
    else:
        where = f"CPU ({m['cpu_count']} cores, {m['torch_threads']} torch threads; reduced CPU mode: tiny shapes)"
    status = "all sections ok" if r["summary"]["all_ok"] else "NOT all sections ok"
    return (f"# harness gpu-check\n\n{where}; torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}.\n"
            f"Mode {r['mode']}, budget {r['budget_s']:.0f} s, wall {r['wall_seconds']:.0f} s, {status}.\n")


def table(r: dict[str, Any]) -> str:
    """One Markdown table: every section's figures, or its error."""
    rows = ["| section | measure | ours / tested | reference / baseline | ratio / result |", "|---|---|---|---|---|"]
    build = {"measure": _measure_rows, "numerics": _numerics_rows, "compile": _compile_rows, "distributed": _distributed_rows}
    for name, s in r["sections"].items():
        kind, _, shape = name.partition(":")
        label = f"{kind}: {SHAPES[shape].title}" if kind == "measure" and shape in SHAPES else f"{kind}: {shape}"
        got = build[kind](label, s) if kind in build else []
        rows += got
        if s.get("status") != "ok":
            first = "" if got else label
            rows.append(f"| {first} | {s.get('status', '?').upper()} after {s.get('seconds', 0):.0f} s | "
                        f"{str(s.get('error', ''))[:300].replace('|', '/')} | | |")
        for part, err in s.get("errors", {}).items():
            rows.append(f"| | part {part} failed | {err[:300].replace('|', '/')} | | |")
    return _header(r) + "\n" + "\n".join(r.replace("\n", " ") if i > 1 else r for i, r in enumerate(rows)) + "\n\n" + NOTES
