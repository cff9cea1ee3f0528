#!/usr/bin/env python3
"""Writes docs/performance.md from the figures scripts/bench measured.

  report.py --results TSV --meta FILE --commands DIR --output FILE

TSV: SCENARIO TOOL RUN SECONDS PEAK_RSS_KIB, one line per timed run.
META: key=value lines (machine, versions, workload). DIR: one file per
SCENARIO.TOOL with the commands of that scenario, as run. Everything in
FILE from its "## Notes" heading on is kept as it is.
"""
import argparse
import os
import statistics
import sys
from collections import defaultdict

NOTES = "## Notes"
NOTES_PLACEHOLDER = """## Notes

<!-- For the analysis of these figures. scripts/bench rewrites everything
above this heading and keeps this section as it is. -->
"""

ap = argparse.ArgumentParser()
ap.add_argument("--results", required=True)
ap.add_argument("--meta", required=True)
ap.add_argument("--commands", required=True)
ap.add_argument("--output", required=True)
a = ap.parse_args()

meta = {}
with open(a.meta) as f:
    for line in f:
        k, _, v = line.rstrip("\n").partition("=")
        meta[k] = v

secs = defaultdict(list)  # (scenario, tool) -> [seconds by run]
by_run = defaultdict(dict)  # (scenario, tool) -> {run: (seconds, peak RSS KiB)}
rss = defaultdict(list)
cpu = defaultdict(list)  # the command's user + system seconds
other = defaultdict(list)  # % of the machine's CPU time others used meanwhile
with open(a.results) as f:
    for line in f:
        sc, tool, run, s, kib, own, oth = line.rstrip("\n").split("\t")
        secs[(sc, tool)].append(float(s))
        by_run[(sc, tool)][run] = (float(s), int(kib))
        rss[(sc, tool)].append(int(kib))
        cpu[(sc, tool)].append(float(own))
        other[(sc, tool)].append(int(oth))


def med(sc, tool):
    v = secs.get((sc, tool))
    return statistics.median(v) if v else None


def peak(sc, tool):
    v = rss.get((sc, tool))
    return max(v) if v else None


def fs(v):
    return "-" if v is None else f"{v:.2f}"


def fx(v):
    return "-" if v is None else f"{v:.2f}x"


def ratio(x, y):
    return None if x is None or y is None or y == 0 else x / y


def mark(ok):
    if ok is None:
        return "n/a"
    return "pass" if ok else "**FAIL**"


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


main_mb = int(meta["main_bytes"]) / 1e6
big_mb = int(meta["big_bytes"]) / 1e6
big_layer = f"one {int(meta['big_bytes']) / 2**30:.2f} GiB layer"
parts_mb = int(meta["parts_bytes"]) / 1e6


def mbps(mb, s):
    return "-" if s is None or s == 0 else f"{mb / s:.0f}"


goals = []  # (goal text, measured text, pass?, how many single rounds meet it)
rows = []


def rounds(values, ok, fmt):
    """How many rounds, taken one by one, meet a goal, and their range:
    a median that passes by a hair shows here as a split count."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    met = sum(1 for v in values if ok(v))
    return f"{met} of {len(values)} ({fmt(min(values))} to {fmt(max(values))})"


def per_round(sc1, tool1, sc2, tool2):
    """Round by round, SCENARIO1/TOOL1's time over SCENARIO2/TOOL2's."""
    a, b = by_run.get((sc1, tool1), {}), by_run.get((sc2, tool2), {})
    return [a[r][0] / b[r][0] for r in sorted(a, key=int) if r in b and b[r][0] > 0]


def ratio_goal(text, sc1, tool1, sc2, tool2, limit):
    x = ratio(med(sc1, tool1), med(sc2, tool2))
    goals.append((text, fx(x), le(x, limit),
                  rounds(per_round(sc1, tool1, sc2, tool2), lambda v: v <= limit, fx)))

ael, sel, fdl = med("export-layout", "airlock"), med("export-layout", "skopeo"), med("floor-download", "curl")
ail, sil, ful = med("import-layout", "airlock"), med("import-layout", "skopeo"), med("floor-upload", "curl")
aea, aia = med("export-archive", "airlock"), med("import-archive", "airlock")


def le(x, limit):
    return None if x is None else x <= limit


rows.append(("Export, 4 images, to a layout", ael, sel, fdl, main_mb))
ratio_goal("export <= 0.6x skopeo", "export-layout", "airlock", "export-layout", "skopeo", 0.6)
ratio_goal("export <= 1.25x floor", "export-layout", "airlock", "floor-download", "curl", 1.25)
rows.append(("Import of that layout into an empty registry", ail, sil, ful, main_mb))
ratio_goal("import <= 0.8x skopeo", "import-layout", "airlock", "import-layout", "skopeo", 0.8)
ratio_goal("import <= 1.25x floor", "import-layout", "airlock", "floor-upload", "curl", 1.25)
rows.append(("Export to a chunked archive (200 MiB parts)", aea, None, fdl, main_mb))
ratio_goal("archive export <= 1.15x layout export", "export-archive", "airlock", "export-layout", "airlock", 1.15)
rows.append(("Import from the chunked archive", aia, None, ful, main_mb))
ratio_goal("archive import <= 1.15x layout import", "import-archive", "airlock", "import-layout", "airlock", 1.15)
for sc, label in [
    ("export-layout-rerun", "Re-run: export into the up-to-date layout"),
    ("export-archive-rerun", "Re-run: export into the up-to-date archive"),
    ("import-layout-rerun", "Re-run: import of the layout into the filled registry"),
    ("import-archive-rerun", "Re-run: import of the archive into the filled registry"),
]:
    v = med(sc, "airlock")
    rows.append((label, v, med(sc, "skopeo"), None, None))
    goals.append((f"{label.split(': ', 1)[1]} < 3 s", fs(v) + " s", None if v is None else v < 3,
                  rounds([t for t, _ in by_run.get((sc, "airlock"), {}).values()], lambda t: t < 3,
                         lambda t: f"{t:.2f} s")))
av, ov = med("verify", "airlock"), med("verify", "openssl")
vr = ratio(ov, av)
goals.append(("verify >= 80% of openssl's speed", "-" if vr is None else f"{vr * 100:.0f}%", None if vr is None else vr >= 0.8,
              rounds(per_round("verify", "openssl", "verify", "airlock"), lambda v: v >= 0.8,
                     lambda v: f"{v * 100:.0f}%")))
rows.append((f"Export of the big image ({big_layer}) to a layout", med("export-big", "airlock"), med("export-big", "skopeo"),
             med("floor-download-big", "curl"), big_mb))
rows.append(("Import of it into an empty registry", med("import-big", "airlock"), med("import-big", "skopeo"),
             med("floor-upload-big", "curl"), big_mb))
for sc, what in [("export-big", "export"), ("import-big", "import")]:
    p = peak(sc, "airlock")
    goals.append((f"peak RSS < 48 MiB, {what} of the 1 GiB layer", mib(p), None if p is None else p < 48 * 1024,
                  rounds([k for _, k in by_run.get((sc, "airlock"), {}).values()], lambda k: k < 48 * 1024, mib)))

L = []
w = L.append
w("# airlock performance")
w("")
w(f"Measured by `scripts/bench` (issue #7) on {meta['date']}: {meta['runs']} run(s) of every")
w(f"scenario, tools alternating, medians below ({meta['elapsed']} s for the whole run, workload")
w(f"scale `{meta['scale']}`). Everything above [Notes](#notes) is rewritten by each run of")
w("`scripts/bench`; the Notes are kept.")
w("")
w("## Machine and versions")
w("")
w("| | |")
w("|---|---|")
for k, label in [("cpu", "CPU"), ("nproc", "nproc"), ("memory", "memory"), ("os", "OS"), ("kernel", "kernel"),
                 ("airlock", "airlock --version"), ("skopeo", "skopeo --version"),
                 ("registry", "docker-registry --version"), ("curl", "curl --version"),
                 ("rustc", "rustc --version"), ("openssl", "openssl version")]:
    w(f"| {label} | {meta.get(k, '?')} |")
w("")
w("## Workload")
w("")
w(f"- {meta['main_images']} multi-arch images (`bench/app1..4:1.0`, OCI index of linux/amd64 and")
w(f"  linux/arm64/v8) sharing one base layer per architecture: {meta['main_blobs']} unique blobs")
w(f"  (layers and configs), {int(meta['main_bytes']):,} bytes ({main_mb:.0f} MB).")
w(f"- `bench/big:1.0`: one amd64 image with a single layer of {int(meta['big_bytes']):,} bytes.")
w("- Every layer is a tar of pseudo-random files, gzip level 1: incompressible.")
w(f"- The archive (`--chunk-size 200MiB`): {meta['parts']} part(s), {int(meta['parts_bytes']):,} bytes.")
w("")
w("## Results")
w("")
w("Wall time in seconds, median of the runs. Floor: plain `curl`, four blobs at a")
w("time, the same unique blobs, no manifest work (downloads for exports, uploads")
w("to an empty registry for imports). MB/s: unique blob bytes / airlock's median.")
w("")
w("| scenario | airlock | skopeo | floor | airlock / skopeo | airlock / floor | airlock MB/s |")
w("|---|---:|---:|---:|---:|---:|---:|")
for label, a_, s_, f_, mb in rows:
    w(f"| {label} | {fs(a_)} | {fs(s_)} | {fs(f_)} | {fx(ratio(a_, s_))} | {fx(ratio(a_, f_))} | "
      f"{mbps(mb, a_) if mb else '-'} |")
w(f"| Verify the archive (warm page cache) vs `openssl dgst -sha256` | {fs(av)} | - | {fs(ov)} (openssl) | - | "
  f"{fx(ratio(av, ov))} | {mbps(parts_mb, av)} (openssl {mbps(parts_mb, ov)}) |")
w("")
w("## Goals")
w("")
w("Measured: the medians' ratio (or the largest peak RSS). Rounds: how many of the")
w("rounds, each taken on its own (run N of one tool against run N of the other), meet")
w("the goal, and their range.")
w("")
w("| goal (issue #7) | measured | | rounds |")
w("|---|---:|---|---|")
for g, m, ok, r in goals:
    w(f"| {g} | {m} | {mark(ok)} | {r} |")
w("")
if any(t in ("airlock-nofsync", "curl-sync") for _, t in secs):
    w("## Where export time goes: durability")
    w("")
    w("Diagnostics, not goals, once per run: the same exports with `fsync`, `fdatasync`,")
    w("`syncfs` and `sync_file_range` turned into no-ops (`LD_PRELOAD` of")
    w("`scripts/bench.d/nofsync.c`, built as `RUN/nofsync.so`), into fresh directories;")
    w("and the floor followed by `sync`, timed together: what making curl's copy durable")
    w("takes. The floor itself writes to the page cache and never waits for the disk;")
    w("airlock makes every blob durable before it names it.")
    w("")
    w("| export | airlock | airlock, no syncs | syncs' share | floor | floor, then `sync` |")
    w("|---|---:|---:|---:|---:|---:|")
    for sc, label, fl in [("export-layout", "4 images, layout", "floor-download"),
                          ("export-archive", "4 images, archive", "floor-download"),
                          ("export-big", f"big image ({big_layer}), layout", "floor-download-big")]:
        x_, n_ = med(sc, "airlock"), med(sc, "airlock-nofsync")
        share = None if x_ is None or n_ is None or x_ == 0 else (x_ - n_) / x_
        w(f"| {label} | {fs(x_)} | {fs(n_)} | {'-' if share is None else f'{share * 100:.0f}%'} | "
          f"{fs(med(fl, 'curl'))} | {fs(med(fl, 'curl-sync'))} |")
    w("")
w("## Peak RSS")
w("")
w("Largest \"Maximum resident set size\" of `/usr/bin/time -v` over the runs (for")
w("skopeo, the largest of its per-image processes).")
w("")
w("| scenario | airlock | skopeo |")
w("|---|---:|---:|")
for sc, label in [("export-layout", "Export, 4 images, layout"), ("import-layout", "Import, 4 images, layout"),
                  ("export-archive", "Export, 4 images, archive"), ("import-archive", "Import, 4 images, archive"),
                  ("export-big", f"Export, {big_layer}"), ("import-big", f"Import, {big_layer}"),
                  ("verify", "Verify the archive")]:
    w(f"| {label} | {mib(peak(sc, 'airlock'))} | {mib(peak(sc, 'skopeo'))} |")
w("")
w("## Every run")
w("")
w("Seconds, run by run (odd runs: airlock, skopeo, curl; even runs reversed); CPU:")
w("the command's user + system seconds (median); other: the largest share of the")
w("machine's CPU time that anything else (not the command, not our registries)")
w("used while a run of it lasting 0.5 s or more was timed (shorter runs are below")
w("the resolution of the kernel's CPU accounting).")
w("")
w("| scenario | tool | runs (s) | median | min | max | CPU (s) | other |")
w("|---|---|---|---:|---:|---:|---:|---:|")
def long_others(key):
    return [o for o, t in zip(other[key], secs[key]) if t >= 0.5]


for (sc, tool), v in secs.items():
    lo = long_others((sc, tool))
    w(f"| {sc} | {tool} | {', '.join(f'{x:.2f}' for x in v)} | {statistics.median(v):.2f} | {min(v):.2f} | "
      f"{max(v):.2f} | {statistics.median(cpu[(sc, tool)]):.2f} | {f'{max(lo)}%' if lo else '-'} |")
w("")
busy = sum(1 for k in secs for o in long_others(k) if o >= 10)
total = sum(len(long_others(k)) for k in secs)
w(f"Timed runs of 0.5 s or more during which others used 10% or more of the CPU: {busy} of {total}.")
w(f"Load average: {meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end;")
w(f"{meta.get('waited', '?')} s spent waiting for the machine to be idle.")
w("")
w("## Commands")
w("")
w("`SRC` and `DST` are the source and target registries (`127.0.0.1:PORT`),")
w("`OUT` the bundle directory; `airlock` is `target/release/airlock`. The floor's")
w("lists, `RUN/unique.main` and `RUN/unique.big`, hold `REPO DIGEST` a line, each")
w("unique blob once; `scripts/bench.d/get-blob` is one `curl -fsS -o FILE")
w("http://SRC/v2/REPO/blobs/DIGEST`, `scripts/bench.d/push-blob` one `curl -X POST")
w(".../blobs/uploads/` and one `curl -T FILE` PUT to its `Location` with `digest=`.")
w("")
order = ["export-layout", "export-layout-rerun", "floor-download", "import-layout", "import-layout-rerun",
         "floor-upload", "export-archive", "export-archive-rerun", "import-archive", "import-archive-rerun",
         "verify", "export-big", "floor-download-big", "import-big", "floor-upload-big"]
files = sorted(os.listdir(a.commands), key=lambda n: (order.index(n.split(".")[0]) if n.split(".")[0] in order else 99, n))
for name in files:
    sc, tool = name.split(".", 1)
    with open(os.path.join(a.commands, name)) as f:
        cmds = f.read().rstrip("\n")
    w(f"{sc}, {tool}:")
    w("")
    w("```sh")
    w(cmds)
    w("```")
    w("")
w("## How it was measured")
w("")
w("- Two distribution registries on 127.0.0.1 (`docker-registry serve`, filesystem")
w("  storage, error-level logs, no access log), storage empty at the start. The")
w("  workload is generated by `scripts/bench.d/workload.py` (cached with `--keep`) and")
w("  pushed with curl: POST, then PUT with `digest=`; manifests PUT with their")
w("  `Content-Type`, children first.")
w("- Every scenario runs once per run; the tools alternate (odd runs airlock first,")
w("  even runs last). Each export writes into a fresh directory; before each import")
w("  the target registry is stopped, its storage wiped and it is started again.")
w("  Re-runs follow the first run at once, into the up-to-date bundle or registry.")
w("  skopeo copies the images one after another, as a user would script it; it imports")
w("  from airlock's layout, the same input airlock reads.")
w("- Before every timed command, outside the clock: `sync`, then a wait (bounded by")
w("  `--max-wait`) until the machine's CPU is under 10% busy. Wall time is taken")
w("  by bash (`EPOCHREALTIME`) around the command, or around all of skopeo's per-image")
w("  commands; peak RSS comes from `/usr/bin/time -v`.")
w("- `verify`: the parts are read once (`cat > /dev/null`) before each timed run, so")
w("  both tools read from the page cache; its speed is the parts' bytes over the time.")
w("- Checked on the way, outside the clock: every exported layout names each image")
w("  with the source's digest and holds every blob it reaches at its size; after each")
w("  import, the target answers a HEAD of every tag (full Accept list) and every child")
w("  manifest with the source's `Docker-Content-Digest`; the floor's downloads hash to")
w("  their digests and its uploads are all in the target.")
w("- skopeo keeps its blob-info cache (`/var/lib/containers/cache` for root) from run")
w("  to run, as it would for a user; airlock keeps no state outside the bundle.")
w("- The client, both registries and the disk share the machine's cores: on a small")
w("  machine the registry's own CPU time is part of every figure.")
w("")

text = "\n".join(L) + "\n"
notes = NOTES_PLACEHOLDER
if os.path.exists(a.output):
    with open(a.output) as f:
        old = f.read()
    i = old.find("\n" + NOTES + "\n")
    if i >= 0:
        notes = old[i + 1:]
    elif old.startswith(NOTES + "\n"):
        notes = old
os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
with open(a.output + ".tmp", "w") as f:
    f.write(text + notes)
os.replace(a.output + ".tmp", a.output)
failed = [g for g, _, ok, _ in goals if ok is False]
print(f"report: {len(goals) - len(failed)} of {len(goals)} goals met" +
      (f"; not met: {'; '.join(failed)}" if failed else ""), file=sys.stderr)
