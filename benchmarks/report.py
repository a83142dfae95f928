"""Write the rows of a run as a Markdown table and a JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path

from minimind_ref.lab.results import RERUN_SPREAD, TITLES

from .common import Row


def _fmt_time(s: float) -> str:
    if s is None or math.isnan(s):
        return "n/a"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _spread(row: Row) -> float:
    return max(row.ratio_rounds) / min(row.ratio_rounds) if row.ratio_rounds else 1.0


def _load(env: dict) -> str:
    load = env.get("load_average_at_start")
    return "n/a" if load is None else ", ".join(f"{x:.2f}" for x in load)


def markdown(rows: list[Row], env: dict, info: dict, started: str, wall: float) -> str:
    lines = [
        f"# Benchmark results: {env['device_name']}",
        "",
        f"- date (UTC): {started}",
        f"- device: {env['device']} ({env['device_name']}), {env['threads']} torch threads, "
        f"{env['cpu_count']} logical CPUs; timed by {env.get('clock', 'wall time')}",
        f"- torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}",
        f"- load average at start (1, 5, 15 min): {_load(env)} (a shared machine: read the ratios)",
        f"- whole run: {wall:.0f} s; command: `{info.get('command', 'python -m benchmarks').strip()}`",
    ]
    for rerun in info.get("re-run", []):
        lines.append(f"- re-run later (`{rerun['command']}`): sections {', '.join(rerun['sections'])} at "
                     f"{rerun['date_utc']} UTC, {rerun['seconds']} s, load average {_load(rerun)}, "
                     f"{rerun.get('threads', env['threads'])} torch threads, timed by "
                     f"{rerun.get('clock', 'wall time')}")
    lines += [
        "",
        "Times are medians over interleaved rounds; a ratio is the median over rounds of the same-round ratio "
        "to the baseline named in its row (below 1: faster than the baseline); the range is the smallest and "
        "the largest same-round ratio.",
        "",
    ]
    rerun = {s for entry in info.get("re-run", []) for s in entry["sections"]}
    spoilt = sorted({r.bench for r in rows if _spread(r) > RERUN_SPREAD} - rerun)
    if spoilt:
        lines += [f"**Re-run rule**: a per-round ratio spread (largest / smallest) above {RERUN_SPREAD:g} in "
                  f"sections {', '.join(spoilt)}: re-run each once with `--only <benchmark> --merge`.", ""]
    targets = [r for r in rows if r.target]
    if targets:
        lines += ["### Targets", "", "| benchmark | candidate | ratio | to | target | met |",
                  "|---|---|---:|---|---|---|"]
        for r in targets:
            lines.append(f"| {r.bench} | {r.name} | {r.ratio:.3f} | {r.baseline} | {r.target} | "
                         f"{'yes' if r.met else '**no**'} |")
        lines.append("")
    for bench, title in TITLES.items():
        these = [r for r in rows if r.bench == bench]
        if not these:
            continue
        lines += [f"### {title}", "",
                  "| candidate | median time | ratio | range (rounds) | to | target | met | note |",
                  "|---|---:|---:|---|---|---|---|---|"]
        for r in these:
            ratio = "" if r.ratio is None else f"{r.ratio:.3f}"
            ranged = f"{min(r.ratio_rounds):.3f}–{max(r.ratio_rounds):.3f} ({len(r.ratio_rounds)})" \
                if r.ratio_rounds else f"({len(r.rounds)})"
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(f"| {r.name} | {_fmt_time(r.seconds)} | {ratio} | {ranged} | {r.baseline or ''} "
                         f"| {r.target or ''} | {met} | {r.note} |")
        lines.append("")
    return "\n".join(lines)


def write(rows: list[Row], env: dict, info: dict, started: str, wall: float, out_dir: Path, stem: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(rows, env, info, started, wall))
    payload = {"date_utc": started, "wall_seconds": wall, "environment": env, "info": info,
               "rows": [r.to_dict() for r in rows]}
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return md


def merge(json_path: Path, rows: list[Row], env: dict, info: dict, started: str, wall: float):
    """The previous results of ``json_path`` with the sections in ``rows`` replaced by the new ones."""
    if not json_path.exists():
        return rows, env, info, started, wall
    old = json.loads(json_path.read_text())
    fields = set(Row.__dataclass_fields__)
    redone = {r.bench for r in rows}
    kept = [Row(**{k: v for k, v in r.items() if k in fields}) for r in old["rows"] if r["bench"] not in redone]
    _add_ratio_rounds(kept)
    merged_info = {**old["info"], **{k: v for k, v in info.items() if k not in ("command", "quick")}}
    merged_info["re-run"] = old["info"].get("re-run", []) + [
        {"sections": sorted(redone), "date_utc": started, "seconds": round(wall),
         "load_average_at_start": env.get("load_average_at_start"), "threads": env.get("threads"),
         "clock": env.get("clock", "wall time"),
         "command": info.get("command", "").strip()}]
    return kept + rows, old["environment"], merged_info, old["date_utc"], old["wall_seconds"]


def _add_ratio_rounds(rows: list[Row]) -> None:
    """Per-round ratios for rows of files written before they were recorded (from the baseline's rounds)."""
    for r in rows:
        if r.baseline and not r.ratio_rounds:
            base = [b for b in rows if b.bench == r.bench and b.name == r.baseline and len(b.rounds) == len(r.rounds)]
            if base:
                r.ratio_rounds = [a / b for a, b in zip(r.rounds, base[0].rounds, strict=True)]


def rewrite(json_path: Path) -> Path:
    """Regenerate the Markdown table from a results JSON file (after a change of the table's layout)."""
    json_path = Path(json_path)
    payload = json.loads(json_path.read_text())
    fields = set(Row.__dataclass_fields__)
    rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in payload["rows"]]
    _add_ratio_rounds(rows)
    md = json_path.with_suffix(".md")
    md.write_text(markdown(rows, payload["environment"], payload["info"], payload["date_utc"], payload["wall_seconds"]))
    return md


if __name__ == "__main__":  # python -m benchmarks.report benchmarks/results/cpu.json
    import sys

    for arg in sys.argv[1:]:
        print("rewritten:", rewrite(Path(arg)))
