"""Streamed unlabeled pool: images/s and peak memory against the pool's size.

    python benchmarks/stream_memory.py                       # 10k, 100k, 1M listed images
    python benchmarks/stream_memory.py --sizes 10000 100000  # a quick look

For each pool size ``N`` it writes an image list of ``N`` lines (cycling over 64 real 64x64 PNG
files: the decode cost of a real pool, the list of a large one) and, in a fresh interpreter per
size, so that each peak is its own:

- **streamed** (``data.unlabeled_source``): counts the list (how the epoch is sized), then draws
  ``--batches`` unlabeled batches (weak + strong view, batch 64, one process, no worker) through
  :class:`~cssa_lightning.data.stream.ListStreamSampler` from the middle of the epoch (a
  resumed position: the sampler skips half the pool's keys first), with the pseudo-labeller's
  ring memory (``pseudo.memory`` 10,000 rows x 80 classes) recording each batch. Reports the
  counting time, images/s of the batches, and the process's peak RSS.
- **listed** (the record-table path, for contrast): builds the ``datasets`` record table of the
  same ``N`` paths and the per-image score memory (``N x 80`` floats, ``pseudo.memory: null``),
  and reports the peak RSS.

Writes ``benchmarks/results/stream_memory.json`` (with the command) and the "Streamed unlabeled
pool" section of ``docs/speed.md``. Timings are from one run on one machine: compare the rows
with each other, not with another machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "stream_memory.json"
DOC = ROOT / "docs" / "speed.md"
BEGIN, END = "<!-- stream:begin -->", "<!-- stream:end -->"
NUM_CLASSES = 80
RING = 10_000
BATCH = 64


def write_pool(folder: Path, size: int) -> Path:
    """``size`` lines over 64 real PNG files in ``folder``."""
    import numpy as np
    from PIL import Image

    images = folder / "images"
    if not images.exists():
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(64):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{i:02d}.png")
    source = folder / f"pool-{size}.txt"
    with source.open("w") as handle:
        for i in range(size):
            handle.write(f"images/{i % 64:02d}.png\n")
    return source


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_streamed(source: str, batches: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from cssa_lightning.data.stream import ListStreamSampler, StreamedImages, count_images
    from cssa_lightning.data.transforms import CLIP_MEAN, CLIP_STD, strong_transform, weak_transform
    from cssa_lightning.methods.pseudo_labels import PseudoLabeller

    torch.set_num_threads(1)
    start_rss = peak_rss_mib()
    begin = time.perf_counter()
    size = count_images(source)
    count_s = time.perf_counter() - begin
    steps = size // BATCH
    weak = weak_transform(64, CLIP_MEAN, CLIP_STD)
    strong = strong_transform(64, CLIP_MEAN, CLIP_STD, 2, 0.3)
    sampler = ListStreamSampler(source, steps * BATCH, seed=1, stream=1, shuffle_buffer=10_000)
    sampler.skip, sampler.resume_epoch = (steps // 2) * BATCH, 0  # resume mid-epoch
    loader = DataLoader(
        StreamedImages(source, size, weak, strong), batch_size=BATCH, sampler=sampler
    )
    labeller = PseudoLabeller(NUM_CLASSES, memory_size=RING)
    labeller.allocate(size)
    begin, drawn, first_s = time.perf_counter(), 0, None
    for batch in loader:
        if first_s is None:  # the skip of half the pool happens before the first batch
            first_s = time.perf_counter() - begin
            begin = time.perf_counter()
        labeller.record(batch["index"], torch.rand(len(batch["index"]), NUM_CLASSES))
        drawn += 1
        if drawn == batches + 1:
            break
    seconds = time.perf_counter() - begin
    return {
        "count_s": round(count_s, 3),
        "resume_skip_s": round(first_s, 3),
        "images_per_s": round(batches * BATCH / seconds, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_imports_mib": round(start_rss, 1),
    }


def measure_listed(source: str) -> dict:
    from cssa_lightning.data.records import RawRecord, build_record_table
    from cssa_lightning.methods.pseudo_labels import PseudoLabeller

    start_rss = peak_rss_mib()
    folder = Path(source).parent
    records = [
        RawRecord(folder / line.strip(), (), f"{source}:{i}")
        for i, line in enumerate(open(source), start=1)
    ]
    table = build_record_table(records, [f"class{k}" for k in range(NUM_CLASSES)])
    labeller = PseudoLabeller(NUM_CLASSES)
    labeller.allocate(len(table))
    assert labeller.scores.shape == (len(table), NUM_CLASSES)
    return {
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_imports_mib": round(start_rss, 1),
    }


def child(args: argparse.Namespace) -> None:
    if args.child == "streamed":
        print(json.dumps(measure_streamed(args.source, args.batches)))
    else:
        print(json.dumps(measure_listed(args.source)))


def run_child(kind: str, source: Path, batches: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--source", str(source)]
    command += ["--batches", str(batches)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(measured: dict) -> float:
    """Peak RSS less the RSS after the imports, MiB."""
    return measured["peak_rss_mib"] - measured["rss_after_imports_mib"]


def markdown(result: dict) -> str:
    lines = [
        BEGIN,
        "## Streamed unlabeled pool: flat in the pool's size",
        "",
        f"`{result['command']}` ({result['date']}, {result['machine']}): an image list of `N` "
        f"lines over 64 real 64x64 PNG files; {result['batches']} unlabeled batches of {BATCH} "
        "(weak + strong view, one process, no loader worker) drawn from the middle of the "
        f"epoch (a resumed position), the pseudo-labeller's ring of {RING:,} rows x "
        f"{NUM_CLASSES} classes recording them. Listed: the same `N` paths as a record table "
        "with a score row per image (`pseudo.memory: null`). Memory: a fresh interpreter per "
        "row; its peak RSS less its RSS after the imports (how much the imports' shared "
        "libraries count in RSS varies between runs by ~170 MiB, so only the growth compares).",
        "",
        "| pool N | count the list (s) | resume to mid-epoch, first batch included (s) "
        "| streamed images/s | streamed: peak RSS growth (MiB) | listed: peak RSS growth (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s, listed = row["streamed"], row.get("listed")
        listed_growth = f"{growth(listed):.0f}" if listed else "-"
        lines.append(
            f"| {row['size']:,} | {s['count_s']:.2f} | {s['resume_skip_s']:.2f} | "
            f"{s['images_per_s']:.0f} | {growth(s):.0f} | {listed_growth} |"
        )
    first, last = result["rows"][0]["streamed"], result["rows"][-1]["streamed"]
    lines += [
        "",
        f"Streamed, from the smallest to the largest pool: memory growth "
        f"{growth(last) - growth(first):+.0f} MiB, images/s "
        f"{last['images_per_s'] / first['images_per_s']:.2f}x. Counting the list and resuming "
        "mid-epoch read it line by line: their time grows with `N`, their memory does not.",
        END,
    ]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if BEGIN in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--no-listed", action="store_true", help="skip the record-table rows")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child", choices=["streamed", "listed"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    command = "python benchmarks/stream_memory.py " + " ".join(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            source = write_pool(Path(folder), size)
            row = {"size": size, "streamed": run_child("streamed", source, args.batches)}
            if not args.no_listed:
                row["listed"] = run_child("listed", source, args.batches)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "batches": args.batches,
        "rows": rows,
    }
    text = markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        write_doc(text)


if __name__ == "__main__":
    main()
