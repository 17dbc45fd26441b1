"""Sparkplug B payloads: the metric table of the edge node and its devices, and the
protobuf messages built from it (births, data, deaths) or read into it (commands).

The only importer of the generated schema module. Aliases are assigned once, from the
config (register maps in file order), so they are the same in every session and a
stored DDATA stays valid after a rebirth. It does no I/O and knows no MQTT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.config import DeviceConfig, RegisterSpec
from agent.sparkplug import sparkplug_b_pb2 as pb

Scalar = float | int | bool | str
Payload = pb.Payload

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
REBIRTH_ALIAS = 0

_DATATYPES: dict[str, int] = {
    "bool": pb.Boolean,
    "bit": pb.Boolean,
    "int16": pb.Int16,
    "uint16": pb.UInt16,
    "int32": pb.Int32,
    "uint32": pb.UInt32,
    "int64": pb.Int64,
    "uint64": pb.UInt64,
    "float32": pb.Float,
    "float64": pb.Double,
    "string": pb.String,
}
"""Register type to Sparkplug datatype, for registers read as they are (no scaling)."""
_INT32 = frozenset({pb.Int8, pb.Int16, pb.Int32, pb.UInt8, pb.UInt16, pb.UInt32})
_INT64 = frozenset({pb.Int64, pb.UInt64})
_SIGNED = frozenset({pb.Int8, pb.Int16, pb.Int32, pb.Int64})


def datatype_of(reg: RegisterSpec) -> int:
    """The Sparkplug datatype of a register's engineering value: a scaled integer
    register is a Double, as the values it yields are."""
    if reg.type in _DATATYPES and (reg.scale != 1.0 or reg.offset != 0.0):
        return pb.Float if reg.type == "float32" else pb.Double
    return _DATATYPES[reg.type]


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    alias: int
    datatype: int


class DeviceMetrics:
    """One device's metrics: its register map's points, each with its alias."""

    def __init__(self, name: str, metrics: Sequence[MetricDef]) -> None:
        self.name = name
        self.metrics = tuple(metrics)
        self._by_name = {m.name: m for m in metrics}
        self._by_alias = {m.alias: m for m in metrics}

    def get(self, name: str) -> MetricDef | None:
        return self._by_name.get(name)

    def resolve(self, metric: pb.Payload.Metric) -> MetricDef | None:
        """The metric a command names, by name or else by alias."""
        if metric.HasField("name"):
            return self._by_name.get(metric.name)
        if metric.HasField("alias"):
            return self._by_alias.get(metric.alias)
        return None


def device_metrics(devices: Iterable[DeviceConfig]) -> dict[str, DeviceMetrics]:
    """Aliases unique across the edge node: 0 is the node's rebirth metric, then every
    device's registers in config and map order."""
    table = {}
    alias = REBIRTH_ALIAS + 1
    for device in devices:
        metrics = []
        for group in device.register_map.groups:
            for reg in group.registers:
                metrics.append(MetricDef(reg.name, alias, datatype_of(reg)))
                alias += 1
        table[device.name] = DeviceMetrics(device.name, metrics)
    return table


def _ms(ts: float) -> int:
    return int(ts * 1000)


def _set_value(metric: pb.Payload.Metric, datatype: int, value: Scalar | None) -> None:
    if value is None:
        metric.is_null = True
    elif datatype == pb.Boolean:
        metric.boolean_value = bool(value)
    elif datatype in _INT32:
        metric.int_value = int(value) & 0xFFFFFFFF  # signed types: two's complement
    elif datatype in _INT64:
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == pb.Float:
        metric.float_value = float(value)
    elif datatype == pb.Double:
        metric.double_value = float(value)
    else:
        metric.string_value = str(value)


def value_of(metric: pb.Payload.Metric, datatype: int) -> Scalar:
    """A metric's value as the datatype says; raises ValueError when it has none that fits."""
    if metric.HasField("datatype") and metric.datatype != datatype:
        raise ValueError(f"metric has datatype {metric.datatype}, expected {datatype}")
    kind = metric.WhichOneof("value")
    if datatype == pb.Boolean and kind == "boolean_value":
        return metric.boolean_value
    if datatype in _INT32 and kind == "int_value":
        bits, raw = 32, metric.int_value
    elif datatype in _INT64 and kind == "long_value":
        bits, raw = 64, metric.long_value
    elif datatype == pb.Float and kind == "float_value":
        return metric.float_value
    elif datatype == pb.Double and kind == "double_value":
        return metric.double_value
    elif datatype == pb.String and kind == "string_value":
        return metric.string_value
    else:
        raise ValueError(f"metric carries {kind or 'no value'}, not a value of datatype {datatype}")
    if datatype in _SIGNED and raw >= 1 << (bits - 1):
        return raw - (1 << bits)
    return raw


def _metric(
    payload: pb.Payload, definition: MetricDef, value: Scalar | None, ts: float, *, named: bool
) -> None:
    metric = payload.metrics.add()
    if named:
        metric.name = definition.name
        metric.datatype = definition.datatype
    metric.alias = definition.alias
    metric.timestamp = _ms(ts)
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    _set_value(metric, definition.datatype, value)


def datatype_of_value(value: Scalar) -> int:
    """The datatype of a module output's value: JSON numbers are all Doubles, as a
    metric's type must not change between an integral value and the next."""
    if isinstance(value, bool):
        return pb.Boolean
    return pb.String if isinstance(value, str) else pb.Double


def node_birth(
    bdseq: int, ts: float, metrics: Iterable[tuple[MetricDef, Scalar | None]] = ()
) -> pb.Payload:
    """bdSeq, the rebirth control, and the node's own metrics (module outputs)."""
    payload = pb.Payload(timestamp=_ms(ts), seq=0)
    bd = payload.metrics.add(name=BDSEQ, timestamp=_ms(ts), datatype=pb.Int64)
    bd.long_value = bdseq
    _metric(payload, MetricDef(REBIRTH, REBIRTH_ALIAS, pb.Boolean), False, ts, named=True)
    for definition, value in metrics:
        _metric(payload, definition, value, ts, named=True)
    return payload


def node_data(metrics: Iterable[tuple[MetricDef, Scalar]], ts: float) -> bytes:
    payload = pb.Payload(timestamp=_ms(ts))
    for definition, value in metrics:
        _metric(payload, definition, value, ts, named=False)
    return bytes(payload.SerializeToString())


def aliases(data: bytes) -> set[int]:
    return {m.alias for m in parse(data).metrics}


def node_death(bdseq: int, ts: float) -> bytes:
    payload = pb.Payload(timestamp=_ms(ts))
    bd = payload.metrics.add(name=BDSEQ, timestamp=_ms(ts), datatype=pb.Int64)
    bd.long_value = bdseq
    return bytes(payload.SerializeToString())


def device_birth(device: DeviceMetrics, values: Mapping[str, Scalar], ts: float) -> bytes:
    """Every metric of the device, named, typed and aliased; null where never read."""
    payload = pb.Payload(timestamp=_ms(ts))
    for definition in device.metrics:
        _metric(payload, definition, values.get(definition.name), ts, named=True)
    return bytes(payload.SerializeToString())


def device_data(device: DeviceMetrics, values: Mapping[str, Scalar], ts: float) -> bytes:
    """The metrics in `values`, by alias only."""
    payload = pb.Payload(timestamp=_ms(ts))
    for name, value in values.items():
        definition = device.get(name)
        if definition is not None:
            _metric(payload, definition, value, ts, named=False)
    return bytes(payload.SerializeToString())


def device_death(ts: float) -> bytes:
    return bytes(pb.Payload(timestamp=_ms(ts)).SerializeToString())


def parse(data: bytes) -> pb.Payload:
    """Raises ValueError for bytes that are not a Sparkplug B payload."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError, or a RuntimeWarning-free variant
        raise ValueError(f"not a Sparkplug B payload: {err}") from err
    return payload


def sequenced(data: bytes, seq: int, *, historical: bool) -> bytes:
    """A stored payload as sent in this session: with its `seq`, and its metrics
    flagged historical when it was stored before the session's births."""
    payload = parse(data)
    payload.seq = seq
    if historical:
        for metric in payload.metrics:
            metric.is_historical = True
    return bytes(payload.SerializeToString())


def wants_rebirth(payload: pb.Payload) -> bool:
    for metric in payload.metrics:
        named = metric.HasField("name") and metric.name == REBIRTH
        aliased = (
            not metric.HasField("name")
            and metric.HasField("alias")
            and metric.alias == REBIRTH_ALIAS
        )
        if (named or aliased) and metric.WhichOneof("value") == "boolean_value":
            return bool(metric.boolean_value)
    return False
