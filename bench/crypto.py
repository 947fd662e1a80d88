"""The cost of end-to-end encryption (AES-256-GCM) against authentication only (AES-GMAC), in one run.

    python bench/crypto.py                # 3 runs, a 1 GiB transfer each way; writes docs/performance.md
    python bench/crypto.py --quick        # small sizes, 1 run; prints only (a smoke test)
    python bench/crypto.py --no-write     # print the tables only

Two measurements, both in this process's run, so that they compare on the same machine under the same load:

  frames     seal + open of chunk frames of agentChunkSize (256 KiB) as the agents do them (ChunkSealer,
             check_chunk_mac): AES-GCM encrypt + decrypt against AES-GMAC tag + check, one core, MB/s of data;
             sha256 of the same bytes beside them (what each side pays anyway for the file's digest)
  transfer   one file A1→A2 through a private Mosquitto, agents as processes (bench/harness.py), with
             agentEncryption=true and agentEncryption=false on both agents, alternately, fresh agents each
             time; median wall time of `fte-create-transfer` to the `completed` event, file checked by sha256

The tables go between <!-- crypto:start --> and <!-- crypto:end --> in docs/performance.md (its section
"Encryption"), apart from bench/run.py's block.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (replace_between, KiB, MiB, ROOT, Pair, fmt, human_bytes, machine_info, make_random_file, mbps,  # noqa: E402
                     median, remove, sha256_file, table, file_transfer, check_results)

from agent.wire.binding import ChunkSealer, check_chunk_mac  # noqa: E402
from agent.wire.protocol import CHUNK_HEADER, finish_chunk  # noqa: E402
from tests.support.brokers import MosquittoProcess  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- crypto:start -->", "<!-- crypto:end -->"
CHUNK = 256 * KiB


def log(msg: str) -> None:
    print(f"[crypto {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _frame(data: bytes, flag: int) -> bytearray:
    frame = bytearray(CHUNK_HEADER.size + len(data))
    frame[CHUNK_HEADER.size:] = data
    finish_chunk(frame, 1, 0, 0, len(data), crc=False, mac_flag=flag)
    return frame


def frames(total: int, runs: int) -> list[list[str]]:
    """MB/s of data through seal + open, per scheme (median of `runs`)."""
    data = os.urandom(CHUNK)
    key = os.urandom(32)
    count = max(1, total // CHUNK)
    schemes = {"AES-256-GCM (encrypt + decrypt)": ChunkSealer(key, gmac=True, aead=True),
               "AES-GMAC (tag + check)": ChunkSealer(key, gmac=True)}
    results: dict[str, list[float | None]] = {name: [] for name in (*schemes, "sha256 (reference)")}
    for _ in range(runs):
        for name, sealer in schemes.items():
            frame = _frame(data, sealer.flag)
            size = len(frame)
            frame += bytes(sealer.room)
            view = memoryview(frame)
            t0 = time.perf_counter()
            for _ in range(count):
                # as agent.source.read_chunk_frame does: a GMAC trailer written in place, encryption into a new buffer
                if sealer.aead:
                    sealed = sealer.finish(view[:size])
                else:
                    view[size:] = sealer.seal(view[:size])
                    sealed = frame
                if check_chunk_mac(sealed, key, sealer.aead) is None:
                    raise RuntimeError(f"{name}: a frame did not open")
            results[name].append(mbps(count * CHUNK, time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(count):
            hashlib.sha256(data).digest()
        results["sha256 (reference)"].append(mbps(count * CHUNK, time.perf_counter() - t0))
    gcm = median(results["AES-256-GCM (encrypt + decrypt)"])
    return [[name, fmt(median(v), 0), fmt(100 * (median(v) or 0) / gcm, 0, " %") if gcm else "n/a"]
            for name, v in results.items()]


def transfers(workdir: Path, size: int, runs: int) -> tuple[list[list[str]], dict[str, float | None]]:
    data = workdir / "data"
    src = data / "src" / "random.bin"
    log(f"making {human_bytes(size)} of random data")
    digest = make_random_file(src, size)
    out = data / "out"
    out.mkdir(parents=True, exist_ok=True)
    broker = MosquittoProcess(workdir=workdir / "mosquitto")
    broker.start()
    seconds: dict[str, list[float | None]] = {"true": [], "false": []}
    try:
        home = 0
        for r in range(runs):
            for setting in ("true", "false"):
                home += 1
                log(f"transfer: run {r + 1}/{runs}, agentEncryption={setting}")
                with Pair(workdir / f"home{home}", broker.url, data, {"agentEncryption": setting}) as pair:
                    dst = out / "big.bin"
                    remove(dst)
                    res = pair.submit([file_transfer(src, dst)], timeout=max(120.0, size / 1e6))
                    check_results(res)
                    if sha256_file(dst) != digest:
                        raise RuntimeError(f"{dst} did not arrive intact")
                    seconds[setting].append(float(res["transfers"][0]["seconds"]))
                    remove(dst)
    finally:
        broker.stop()
    med = {k: median(v) for k, v in seconds.items()}
    rows = [[f"agentEncryption={k} ({'AES-256-GCM' if k == 'true' else 'AES-GMAC, readable'})",
             fmt(med[k], 2, " s"), fmt(mbps(size, med[k]), 0), ", ".join(fmt(s, 2) for s in seconds[k])]
            for k in ("true", "false")]
    return rows, med


def render(frame_rows: list[list[str]], transfer_rows: list[list[str]], size: int, runs: int, total: int,
           med: dict[str, float | None]) -> str:
    info = machine_info()
    cost = None
    if med.get("true") and med.get("false"):
        cost = 100 * (med["true"] - med["false"]) / med["false"]  # type: ignore[operator]
    lines = [
        f"Measured by `python bench/crypto.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{info['nproc']} cores ({info['cpu']}), Python {info['python']}, Mosquitto {info['mosquitto']}, "
        f"commit {info['commit']}, load {info['load']}; medians of {runs} run(s).",
        "",
        f"Seal + open of {CHUNK // KiB} KiB chunk frames as the agents do them (ChunkSealer, check_chunk_mac), "
        f"{human_bytes(total)} per run, one core, MB/s of file data:",
        "",
        table(["scheme", "MB/s", "against AES-GCM"], frame_rows),
        "",
        f"One {human_bytes(size)} file A1→A2 through a private Mosquitto, fresh agents for every run, the two "
        "settings alternating (wall time from submission to the `completed` event):",
        "",
        table(["agents", "median", "MB/s", "each run (s)"], transfer_rows),
        "",
    ]
    if cost is not None:
        lines += [f"Encryption cost {cost:+.1f} % of the transfer's wall time in this run (a difference within "
                  "a few per cent is within the run-to-run spread on this shared machine).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/crypto.py", description="AES-GCM against AES-GMAC, in one run.")
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 run, print only")
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3; --quick: 1)")
    ap.add_argument("--size-mib", type=int, default=None, help="the transfer's file (default 1024; --quick: 32)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    a = ap.parse_args(argv)
    runs = a.runs or (1 if a.quick else 3)
    size = (a.size_mib or (32 if a.quick else 1024)) * MiB
    total = (32 if a.quick else 1024) * MiB
    log(f"frames: {human_bytes(total)} per scheme per run")
    frame_rows = frames(total, runs)
    with tempfile.TemporaryDirectory(prefix="fte-crypto-") as tmp:
        transfer_rows, med = transfers(Path(tmp), size, runs)
    block = render(frame_rows, transfer_rows, size, runs, total, med)
    print(block)
    if not (a.quick or a.no_write):
        replace_between(DOC, START, END, block)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
