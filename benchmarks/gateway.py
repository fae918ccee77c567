"""The gateway's overhead: the same plain ``openai`` SDK script (contender c, ``contenders/openai_sdk.py``)
talking to the emulator directly, and through ``asyncbatch proxy`` whose engine talks to that emulator.

Each run: the script's wall time and peak RSS (its own process, ``wait4``), and for the gateway run the proxy
process's peak RSS (``VmHWM``) and CPU time. The proxy polls the emulator every second, as the script polls it.

    .venv/bin/python benchmarks/gateway.py --n 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from harness import (
    CONTENDERS,
    PYTHON,
    ROOT,
    WORK,
    Measured,
    bench_env,
    emulator,
    input_file,
    run_child,
    save,
    table,
)

MASTER = "sk-bench-master"


def proxy_config(path: Path, upstream: str) -> None:
    path.write_text(json.dumps({
        "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": upstream, "api_key": "os.environ/OPENAI_API_KEY"}}],
        "general_settings": {"master_key": MASTER},
    }))


def virtual_key(url: str) -> str:
    request = urllib.request.Request(url + "/key/generate", data=b'{"team_id": "bench"}', method="POST",
                                     headers={"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return str(json.loads(response.read())["key"])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def script(base_url: str, n: int, workdir: Path, env: dict[str, str]) -> Measured:
    workdir.mkdir(parents=True, exist_ok=True)
    measured = run_child([PYTHON, str(CONTENDERS / "openai_sdk.py"), "--base-url", base_url,
                          "--input", str(input_file("openai", n)), "--workdir", str(workdir)], env=env)
    ok = json.loads(measured.stdout.strip().splitlines()[-1])["ok"]
    if ok != n:
        raise RuntimeError(f"{ok} of {n} requests succeeded")
    return measured


def direct(n: int, workdir: Path) -> Measured:
    with emulator(workdir / "emulator") as emu:
        return script(emu.openai_base_url, n, workdir / "script", bench_env())


def through_gateway(n: int, workdir: Path) -> tuple[Measured, float, float]:
    """(the script, the proxy's peak RSS in MiB, the proxy's CPU seconds)."""
    with emulator(workdir / "emulator") as emu:
        config = workdir / "proxy.yaml"
        proxy_config(config, emu.openai_base_url)
        proxy = subprocess.Popen(
            [PYTHON, "-m", "asyncbatch", "proxy", "--config", str(config), "--db", str(workdir / "gateway.db"),
             "--port", "0", "--poll-interval", "1", "--max-poll-interval", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=bench_env(PROXY_MASTER_KEY=MASTER))
        try:
            assert proxy.stdout is not None
            url = proxy.stdout.readline().decode().split(" on ")[-1].strip()
            measured = script(url + "/v1", n, workdir / "script", bench_env(OPENAI_API_KEY=virtual_key(url)))
            rss = peak_rss_mb(proxy.pid)
            times = psutil.Process(proxy.pid).cpu_times()
            return measured, rss, float(times.user + times.system)
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"direct": [], "gateway": [], "script_rss_direct": [], "script_rss_gateway": [],
                                    "proxy_rss": [], "proxy_cpu": []}
    for round_ in range(args.rounds):  # alternating, so that a slower minute of the machine hits both
        workdir = WORK / "gateway" / f"round-{round_}"
        shutil.rmtree(workdir, ignore_errors=True)
        plain = direct(args.n, workdir / "direct")
        proxied, rss, cpu = through_gateway(args.n, workdir / "gateway")
        runs["direct"].append(plain.wall)
        runs["gateway"].append(proxied.wall)
        runs["script_rss_direct"].append(plain.peak_rss_mb)
        runs["script_rss_gateway"].append(proxied.peak_rss_mb)
        runs["proxy_rss"].append(rss)
        runs["proxy_cpu"].append(cpu)
        print(f"round {round_ + 1}: direct {plain.wall:.2f} s, through the gateway {proxied.wall:.2f} s "
              f"(proxy peak RSS {rss:.0f} MiB, CPU {cpu:.2f} s)", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\n{args.n:,} requests, medians of {args.rounds} ({time.strftime('%Y-%m-%d')}):\n")
    print(table([
        ["openai SDK -> emulator", med["direct"], med["script_rss_direct"], "-", "-"],
        ["openai SDK -> asyncbatch proxy -> emulator", med["gateway"], med["script_rss_gateway"], med["proxy_rss"],
         med["proxy_cpu"]],
    ], ["path", "wall s", "script peak RSS MiB", "proxy peak RSS MiB", "proxy CPU s"]))
    print(f"\ngateway overhead: +{med['gateway'] - med['direct']:.2f} s wall "
          f"({med['gateway'] / med['direct']:.2f}x)")
    print(f"raw figures: {save('gateway', runs)}")


if __name__ == "__main__":
    main()
