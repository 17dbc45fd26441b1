"""Sparkplug B payloads: the metric table of the edge node and its devices, and the
protobuf messages built from it (births, data, deaths) or read into it (commands).

The only importer of the generated schema module. Aliases are assigned once, from the
config (register maps, then OPC UA node maps, in file order), so they are the same in
every session and a stored DDATA stays valid after a rebirth. It does no I/O and knows
no MQTT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.config import DeviceConfig, NodeSpec, OpcuaDeviceConfig, RegisterSpec
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
_BITS: dict[int, int] = {
    **dict.fromkeys((pb.Int8, pb.UInt8), 8),
    **dict.fromkeys((pb.Int16, pb.UInt16), 16),
    **dict.fromkeys((pb.Int32, pb.UInt32), 32),
    **dict.fromkeys((pb.Int64, pb.UInt64), 64),
}


def datatype_of(reg: RegisterSpec) -> int:
    """The Sparkplug datatype of a register's engineering value: a scaled integer
    register is a Double, as the values it yields are."""
    if reg.type in _DATATYPES and (reg.scale != 1.0 or reg.offset != 0.0):
        return pb.Float if reg.type == "float32" else pb.Double
    return _DATATYPES[reg.type]


def datatype_of_point(point: NodeSpec) -> int:
    """The Sparkplug datatype of an OPC UA point: its node map type, as for a register
    read as it is."""
    return _DATATYPES[point.type]


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    alias: int
    datatype: int
    writable: bool = False
    """Whether a command may set it: a writable register or point; never a node metric."""


class DeviceMetrics:
    """One device's metrics: its register map's or node map's points, each with its alias."""

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


def device_metrics(
    devices: Iterable[DeviceConfig | OpcuaDeviceConfig],
) -> dict[str, DeviceMetrics]:
    """Aliases unique across the edge node: 0 is the node's rebirth metric, then every
    Modbus device's registers in config and map order, then every OPC UA device's points
    in config and node map order (after the Modbus ones: adding an OPC UA device leaves
    the Modbus aliases as they were)."""
    table = {}
    alias = REBIRTH_ALIAS + 1
    devices = list(devices)
    for device in devices:
        if isinstance(device, DeviceConfig):
            metrics = []
            for group in device.register_map.groups:
                for reg in group.registers:
                    metrics.append(MetricDef(reg.name, alias, datatype_of(reg), reg.writable))
                    alias += 1
            table[device.name] = DeviceMetrics(device.name, metrics)
    for device in devices:
        if isinstance(device, OpcuaDeviceConfig):
            metrics = []
            for point in device.node_map.points:
                metrics.append(
                    MetricDef(point.name, alias, datatype_of_point(point), point.writable)
                )
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
    """A metric's value as the datatype says; raises ValueError when it has none that fits
    (another datatype declared or carried, an integer outside the datatype's range)."""
    expected = _datatype_name(datatype)
    if metric.HasField("datatype") and metric.datatype != datatype:
        declared = _datatype_name(metric.datatype)
        raise ValueError(f"declares datatype {declared}, the metric is {expected}")
    kind = metric.WhichOneof("value")
    if datatype == pb.Boolean and kind == "boolean_value":
        return metric.boolean_value
    if datatype in _INT32 and kind == "int_value":
        raw = metric.int_value
    elif datatype in _INT64 and kind == "long_value":
        raw = metric.long_value
    elif datatype == pb.Float and kind == "float_value":
        return metric.float_value
    elif datatype == pb.Double and kind == "double_value":
        return metric.double_value
    elif datatype == pb.String and kind == "string_value":
        return metric.string_value
    else:
        raise ValueError(f"carries {kind or 'no value'}, not a value of datatype {expected}")
    # Signed values travel as two's complement of the field's width (32 or 64 bits).
    field_bits = 64 if datatype in _INT64 else 32
    if datatype in _SIGNED and raw >= 1 << (field_bits - 1):
        raw -= 1 << field_bits
    bits = _BITS[datatype]
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if datatype in _SIGNED else (0, (1 << bits) - 1)
    )
    if not low <= raw <= high:
        raise ValueError(f"{raw} is outside the range of {expected}")
    return raw


def _datatype_name(datatype: int) -> str:
    try:
        return pb.DataType.Name(datatype)
    except ValueError:
        return str(datatype)


def _named(metric: pb.Payload.Metric) -> str:
    """A command's metric as an error names it: by name, or else by alias."""
    if metric.HasField("name"):
        return repr(metric.name)
    if metric.HasField("alias"):
        return f"alias {metric.alias}"
    return "(no name, no alias)"


def device_command(device: DeviceMetrics, payload: pb.Payload) -> list[tuple[MetricDef, Scalar]]:
    """The writes a DCMD asks for, each metric resolved and its value typed; raises
    ValueError naming every metric that is unknown, read-only or of another datatype,
    so that a command with one bad metric writes none."""
    writes: list[tuple[MetricDef, Scalar]] = []
    problems = [] if payload.metrics else ["it carries no metrics"]
    for metric in payload.metrics:
        definition = device.resolve(metric)
        if definition is None:
            problems.append(f"unknown metric {_named(metric)}")
        elif not definition.writable:
            problems.append(f"{definition.name!r} is read-only")
        else:
            try:
                writes.append((definition, value_of(metric, definition.datatype)))
            except ValueError as err:
                problems.append(f"{definition.name!r}: {err}")
    if problems:
        raise ValueError("; ".join(problems))
    return writes


def node_command(payload: pb.Payload) -> bool:
    """Whether an NCMD asks for a rebirth; raises ValueError naming every metric that is
    not `Node Control/Rebirth` with a Boolean value (the only node command)."""
    rebirth = False
    problems = [] if payload.metrics else ["it carries no metrics"]
    for metric in payload.metrics:
        if metric.HasField("name"):
            is_rebirth = metric.name == REBIRTH
        else:
            is_rebirth = metric.HasField("alias") and metric.alias == REBIRTH_ALIAS
        if not is_rebirth:
            problems.append(f"metric {_named(metric)} is not a node command (only {REBIRTH!r} is)")
            continue
        try:
            rebirth = rebirth or bool(value_of(metric, pb.Boolean))
        except ValueError as err:
            problems.append(f"{REBIRTH!r}: {err}")
    if problems:
        raise ValueError("; ".join(problems))
    return rebirth


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
