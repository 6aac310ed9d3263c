"""What every benchmark script shares: its command line, where results go, how they are written, the machine.

Each script is a module of this package, run from the repository root as ``python -m benchmarks.NAME`` (or all
of them by ``python -m benchmarks``). A script

- builds its command line with :func:`benchmark_parser` (``--out`` and ``--threads`` come from here),
- sets torch's thread count with :func:`set_threads`,
- times with :class:`Stopwatch`,
- records :func:`machine` under the result's ``"machine"`` key,
- starts learned runs from reference frames with their velocity history from ``openmm_cgml.simulate.calibrate.true_history``,
- writes its result with :func:`write_json` (atomically: a reader never sees half a file) to
  ``benchmarks/results/NAME.json``, and a figure, if it draws one, to :func:`figure_path` of that file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where the results JSON files (and SUMMARY.md) live.
RESULTS = os.path.join(HERE, "results")
#: Where the benchmarks' input data live.
DATA = os.path.join(HERE, "data")


# ---------------------------------------------------------------------------------------------- results
def result_path(name: str) -> str:
    """``benchmarks/results/NAME.json``."""
    return os.path.join(RESULTS, f"{name}.json")


def figure_path(json_path: str) -> str:
    """The PNG that goes with a result file: the same path with ``.png`` instead of ``.json``."""
    return os.path.splitext(json_path)[0] + ".png"


def write_text(text: str, path: str) -> str:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(result: dict, path: str) -> str:
    """Write ``result`` as indented JSON to ``path`` atomically; returns the path."""
    return write_text(json.dumps(result, indent=2) + "\n", path)


# ---------------------------------------------------------------------------------------------- campaign data
def composition(path: str) -> dict:
    """EO units per chain, chains, LiTFSI pairs and temperature (K) of a campaign dataset (from its provenance)."""
    from openmm_cgml.data import CGDataset

    with CGDataset(path) as ds:
        args = ds.provenance["system"]["args"]
    return {"eo_per_chain": int(args["eo_per_chain"]), "n_chains": int(args["n_chains"]),
            "n_salt": int(args["n_salt"]), "temperature_K": float(args["temperature_K"])}


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host.processor() or "unknown"


def machine(threads: int | None = None, device: str = "cpu") -> dict:
    """Where a result was measured: CPU model, threads (default: torch's), device and library versions."""
    import openmm
    import torch

    return {"cpu_model": cpu_model(), "threads": int(threads) if threads else torch.get_num_threads(),
            "device": str(device), "cuda": torch.cuda.is_available(), "torch_version": torch.__version__,
            "openmm_version": openmm.version.full_version, "os": host.platform()}


def set_threads(threads: int | None) -> int:
    """Use ``threads`` torch CPU threads (None: torch's choice); returns the number in use."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------- command line
def benchmark_parser(doc: str, name: str | None, threads: int | None = None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc`` (the script's docstring; the rest is shown as
    the epilog), with ``--out`` (default ``benchmarks/results/NAME.json``; None: no default) and ``--threads``
    (default ``threads``; None: the library's choice)."""
    lines = doc.strip().splitlines()
    parser = argparse.ArgumentParser(description=lines[0], epilog="\n".join(lines[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=result_path(name) if name else None,
                        help="result JSON file (default: %s)" % (result_path(name) if name else
                                                                 "this benchmark's file in benchmarks/results/"))
    parser.add_argument("--threads", type=int, default=threads, help="CPU threads (default: %(default)s)")
    return parser


# ---------------------------------------------------------------------------------------------- timing
class Stopwatch:
    """Wall-clock seconds of a ``with`` block: ``with Stopwatch() as clock: ...; clock.seconds``."""

    def __init__(self):
        self.seconds = None
        self._start = None

    def __enter__(self) -> "Stopwatch":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
