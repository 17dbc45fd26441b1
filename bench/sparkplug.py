"""Bytes on the wire per reading: Sparkplug B DDATA against the JSON raw reading.

The readings are real: the agent's poller (`DevicePool`) polls the simulated pump
(`SimServer` serving a `PumpDevice`, in this process on loopback) through
`config/devices/pump.toml`, both register groups, until it has `--readings` of them.
Each reading is then encoded both ways, with the same values:

- JSON: `Reading.to_json_line()` without its newline, as the pipeline publishes it on
  `edge/<node>/devices/<device>` at QoS 1;
- Sparkplug: the agent's own DDATA encoder with every good value of the reading, by
  alias, with the session's `seq`, as the node's session publishes it on
  `spBv1.0/<group>/DDATA/<node>/<device>` at QoS 0 (the default `data_qos`).

Each figure is the payload and the whole MQTT 5 PUBLISH packet: fixed header (type
byte and remaining length), topic (2-byte length and the name), packet id at QoS 1,
property length (the agent sets no properties on either). A last line shows what the
node really sends: DDATA by exception carries only the values that changed, and no
message when none did; the JSON topic carries every value of every reading.

The encoder is `agent.sparkplug._payload`: the package's public surface is the node,
which needs a broker session to produce anything, and this counts bytes, not sessions.

    .venv/bin/python bench/sparkplug.py [--readings N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from agent.config import DeviceConfig
from agent.modbus import DevicePool
from agent.reading import Reading
from agent.sim import PumpDevice, PumpModel, SimServer
from agent.sparkplug._payload import Scalar, device_data, device_metrics, sequenced

ROOT = Path(__file__).resolve().parent.parent
NODE = "demo"
GROUP = "demo"
DEVICE = "pump-1"
JSON_TOPIC = f"edge/{NODE}/devices/{DEVICE}"
DDATA_TOPIC = f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}"


def publish_packet(topic: str, payload: int, qos: int) -> int:
    """Bytes of an MQTT 5 PUBLISH with no properties: `payload` bytes of payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + payload
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


async def poll(count: int, map_path: Path) -> tuple[DeviceConfig, list[Reading]]:
    """`count` readings of the pump, as the poller makes them."""
    readings: list[Reading] = []
    enough = asyncio.Event()

    async def on_reading(reading: Reading) -> None:
        readings.append(reading)
        if len(readings) >= count:
            enough.set()

    pump = PumpDevice(PumpModel(seed=14, fault_rate_per_h=0))
    async with SimServer({1: pump.image}) as server:
        device = DeviceConfig(
            name=DEVICE, transport="tcp", host="127.0.0.1", port=server.port, map=map_path
        )
        async with DevicePool.create([device], on_reading):
            await asyncio.wait_for(enough.wait(), 60)
    return device, readings[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        map_path = Path(tmp) / "pump.toml"
        text = (ROOT / "config" / "devices" / "pump.toml").read_text()
        # Both groups, quickly: the settings group every tenth process poll, as in the map.
        text = text.replace("interval_s = 1.0", "interval_s = 0.01", 1)
        text = text.replace("interval_s = 10.0", "interval_s = 0.1", 1)
        map_path.write_text(text)
        device, readings = asyncio.run(poll(args.readings, map_path))
    metrics = device_metrics([device])[DEVICE]

    json_payload, json_wire, sp_payload, sp_wire = [], [], [], []
    rbe_wire = 0
    last: dict[str, Scalar] = {}
    values = 0
    for seq, reading in enumerate(readings):
        good = {n: v.value for n, v in reading.values.items() if v.quality == "good"}
        assert len(good) == len(reading.values), "a bad value: the two would not compare"
        values += len(good)
        doc = reading.to_json_line().rstrip(b"\n")
        json_payload.append(len(doc))
        json_wire.append(publish_packet(JSON_TOPIC, len(doc), qos=1))
        data = sequenced(device_data(metrics, good, reading.ts), seq % 256, historical=False)
        sp_payload.append(len(data))
        sp_wire.append(publish_packet(DDATA_TOPIC, len(data), qos=0))
        changed = {n: v for n, v in good.items() if last.get(n) != v}
        last.update(changed)
        if changed:
            data = sequenced(device_data(metrics, changed, reading.ts), seq % 256, historical=False)
            rbe_wire += publish_packet(DDATA_TOPIC, len(data), qos=0)

    mean = statistics.fmean
    per_value = values / len(readings)
    print(
        f"{len(readings)} readings of the simulated pump, both register groups, "
        f"{per_value:.1f} values each on average"
    )
    print(
        f"JSON raw reading      : {mean(json_payload):6.1f} B payload, {mean(json_wire):6.1f} B "
        f"on the wire (QoS 1, topic {JSON_TOPIC!r})"
    )
    print(
        f"Sparkplug B DDATA     : {mean(sp_payload):6.1f} B payload, {mean(sp_wire):6.1f} B "
        f"on the wire (QoS 0, topic {DDATA_TOPIC!r})"
    )
    print(
        f"ratio DDATA / JSON    : {mean(sp_payload) / mean(json_payload):6.2f}x payload, "
        f"{mean(sp_wire) / mean(json_wire):6.2f}x on the wire"
    )
    print(
        f"as the node sends it  : {rbe_wire / len(readings):6.1f} B on the wire per reading "
        f"(DDATA by exception: changed values only), {rbe_wire / sum(json_wire):.2f}x JSON"
    )


if __name__ == "__main__":
    main()
