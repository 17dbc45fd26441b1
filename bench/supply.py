"""Time from a deploy request to the new version serving its first reading, for a
100 KB module, with the compiled-module cache cold and warm (wasmtime).

The deploy pulls from a signed local OCI layout (the sideload path: the same signature,
digest, policy and store steps as a registry pull, without the network), smoke-tests,
activates and serves one reading. Baseline from the same run: compiling and
instantiating the same bytes and serving one reading, with the same cache state.

    .venv/bin/python bench/supply.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.config import parse_config
from agent.reading import Reading, Value
from agent.supply import InstalledModule, Supply, encrypt_private_key, generate_key, package
from agent.supply._keys import load_private_key, public_key_of
from agent.supply._layout import LayoutRepository
from agent.supply._signatures import sign
from agent.wasm import Engine, ReactorModule, create_engine

ROOT = Path(__file__).resolve().parent.parent
READING = Reading("pump-1", 1.0, 0, {"t": Value(1.5)})
SIZE = 100 * 1024


def padded_wasm() -> bytes:
    """faulty.wasm grown to 100 KB with a custom section (ignored by engines)."""
    wasm = (ROOT / "modules" / "dist" / "faulty.wasm").read_bytes()
    name = b"\x07padding"
    pad = SIZE - len(wasm) - 1 - 3 - len(name)
    payload = name + bytes(pad)
    size = len(payload)
    leb = bytes([(size & 0x7F) | 0x80, ((size >> 7) & 0x7F) | 0x80, size >> 14])
    return wasm + b"\x00" + leb + payload


def serve(engine: Engine, wasm: bytes) -> ReactorModule:
    module = ReactorModule(engine.compile(wasm, "faulty"), {"fault": "none"})
    module.on_reading(READING)
    return module


def cached_engine(cache: Path, wasm: bytes, warm: bool) -> Engine:
    """A wasmtime engine on `cache`, which holds the compiled module when `warm`."""
    if warm:
        engine = create_engine("wasmtime", cache_dir=cache)
        serve(engine, wasm).close()
        engine.close()
    return create_engine("wasmtime", cache_dir=cache)


async def make_package(tmp: Path) -> tuple[str, Path]:
    src = tmp / "src"
    src.mkdir()
    (src / "faulty.wasm").write_bytes(padded_wasm())
    (src / "module.toml").write_text(
        'name = "faulty"\nversion = "1.0.0"\nwasm = "faulty.wasm"\nconfig = {fault = "none"}\n'
        '[capabilities]\nemit = ["echo"]\n'
    )
    packaged = await package(src, tmp / "layout")
    key = generate_key()
    (tmp / "cosign.key").write_bytes(encrypt_private_key(key, b"pw", scrypt_n=1 << 15))
    (tmp / "cosign.pub").write_bytes(public_key_of(key, "cosign.pub").pem())
    repo = LayoutRepository(packaged.layout)
    target = await repo.get_manifest(packaged.tag)
    await sign(repo, target, load_private_key(tmp / "cosign.key", b"pw"))
    return f"oci:{packaged.layout}:{packaged.tag}", tmp / "cosign.pub"


class _Runner:
    """The runtime's part of a deploy, reduced to compiling and starting the module."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.serving: list[ReactorModule] = []

    async def smoke_test(self, m: InstalledModule) -> None:
        compiled = self.engine.compile(m.wasm_path.read_bytes(), m.name)
        ReactorModule(compiled, m.manifest.config).close()

    async def activate(self, m: InstalledModule) -> None:
        self.serving.append(serve(self.engine, m.wasm_path.read_bytes()))

    async def stop(self, name: str) -> None:
        raise AssertionError(f"the benchmark never stops {name}")


async def deploy_ms(ref: str, pub: Path, state: Path, engine: Engine) -> float:
    config = parse_config(
        {"node": {"state_dir": str(state)}, "supply": {"trusted_keys": [str(pub)]}},
        state / "agent.toml",
    )
    runner = _Runner(engine)
    t0 = time.perf_counter()
    async with await Supply.create(config, runner) as supply:
        await supply.deploy(ref)
    elapsed = (time.perf_counter() - t0) * 1000
    runner.serving[0].close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ref, pub = asyncio.run(make_package(tmp))
        wasm = padded_wasm()
        print(
            f"deploy to serving, {len(wasm) // 1024} KB module, wasmtime, median of {args.rounds}"
        )
        for label, warm in (("cold cache", False), ("warm cache", True)):
            deploys, baselines = [], []
            for i in range(args.rounds):
                engine = cached_engine(tmp / f"cache-{label}-{0 if warm else i}", wasm, warm)
                deploys.append(asyncio.run(deploy_ms(ref, pub, tmp / f"state-{label}-{i}", engine)))
                engine.close()
                engine = cached_engine(tmp / f"base-{label}-{0 if warm else i}", wasm, warm)
                t0 = time.perf_counter()
                serve(engine, wasm).close()
                baselines.append((time.perf_counter() - t0) * 1000)
                engine.close()
            d, b = statistics.median(deploys), statistics.median(baselines)
            print(
                f"{label:11} deploy {d:8.1f} ms   baseline compile+instantiate+1 reading "
                f"{b:7.1f} ms   ratio {d / b:5.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
