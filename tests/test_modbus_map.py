"""Register maps, their validation, request planning, and the `devices` config section."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import RegisterSpec, load_config, load_register_map
from agent.errors import ConfigError
from agent.modbus import ReadBlock, plan_reads

REPO = Path(__file__).resolve().parent.parent
PUMP_MAP = REPO / "config" / "devices" / "pump.toml"


def reg(address: int, kind: str = "uint16", table: str = "holding", **kw: object) -> RegisterSpec:
    kw.setdefault("name", f"r{table[0]}{address}")
    return RegisterSpec(table=table, address=address, type=kind, **kw)  # type: ignore[arg-type]


def test_the_pump_map_loads() -> None:
    pump = load_register_map(PUMP_MAP)
    names = {r.name for g in pump.groups for r in g.registers}
    assert {"temperature", "vibration", "pressure"} <= names
    assert pump.register("speed_setpoint") is not None
    assert pump.register("speed_setpoint").writable  # type: ignore[union-attr]


def write_map(tmp_path: Path, register: str) -> Path:
    path = tmp_path / "dev.toml"
    path.write_text(f'[[groups]]\nname = "g"\ninterval_s = 1\n[[groups.registers]]\n{register}\n')
    return path


@pytest.mark.parametrize(
    ("register", "message"),
    [
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "float"', "groups.0.registers.0.type"),
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "bool"', "'bool' lives only there"),
        ('name = "t"\ntable = "coil"\naddress = 0\ntype = "int16"', "coils and discrete"),
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "bit"', "needs 'bit'"),
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "string"', "needs 'length'"),
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "int16"\nwritable = true', "writable"),
        ('name = "t"\ntable = "holding"\naddress = 65535\ntype = "int32"', "past address 65535"),
        (
            'name = "t"\ntable = "input"\naddress = 0\ntype = "int16"\ncolour = 1',
            "colour: unknown key",
        ),
        (
            'name = "t"\ntable = "holding"\naddress = 0\ntype = "int16"\nwritable = true\n'
            "min = 5\nmax = 1",
            r"min \(5.0\) is above max",
        ),
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "int16"\nscale = nan', "scale: Input"),
        ('name = "t"\ntable = "input"\naddress = 0\ntype = "int16"\noffset = -inf', "offset"),
        (
            'name = "t"\ntable = "holding"\naddress = 0\ntype = "int16"\nwritable = true\n'
            "min = nan",
            "min: Input should be a finite number",
        ),
    ],
)
def test_bad_maps_name_file_key_and_expectation(
    tmp_path: Path, register: str, message: str
) -> None:
    path = write_map(tmp_path, register)
    with pytest.raises(ConfigError, match=message) as info:
        load_register_map(path)
    assert str(path) in str(info.value)


def test_duplicate_register_names_are_refused(tmp_path: Path) -> None:
    path = write_map(tmp_path, 'name = "t"\ntable = "input"\naddress = 0\ntype = "int16"')
    path.write_text(
        path.read_text()
        + '[[groups.registers]]\nname = "t"\ntable = "input"\naddress = 1\ntype = "int16"\n'
    )
    with pytest.raises(ConfigError, match="'t' is used twice"):
        load_register_map(path)


def test_neighbours_merge_into_one_read() -> None:
    regs = [reg(0, "float32"), reg(2), reg(3, "uint64")]
    assert plan_reads(regs, max_gap=0) == (ReadBlock("holding", 0, 7),)


def test_gap_within_limit_is_bridged_beyond_it_split() -> None:
    regs = [reg(0), reg(5), reg(20)]
    assert plan_reads(regs, max_gap=4) == (ReadBlock("holding", 0, 6), ReadBlock("holding", 20, 1))
    assert plan_reads(regs, max_gap=3) == (
        ReadBlock("holding", 0, 1),
        ReadBlock("holding", 5, 1),
        ReadBlock("holding", 20, 1),
    )


def test_tables_never_merge() -> None:
    regs = [reg(0), reg(1, table="input"), reg(0, "bool", "coil"), reg(1, "bool", "discrete_input")]
    assert [(b.table, b.address) for b in plan_reads(regs, max_gap=10)] == [
        ("coil", 0),
        ("discrete_input", 1),
        ("holding", 0),
        ("input", 1),
    ]


def test_reads_stay_within_125_registers_and_2000_bits() -> None:
    regs = [reg(a, "uint64") for a in range(0, 300, 4)]
    blocks = plan_reads(regs, max_gap=0)
    assert max(b.count for b in blocks) <= 125
    assert [b.count for b in blocks] == [124, 124, 52]
    bits = [reg(a, "bool", "coil") for a in range(2500)]
    assert [b.count for b in plan_reads(bits, max_gap=0)] == [2000, 500]


def test_overlapping_values_share_a_read() -> None:
    regs = [reg(10, "bit", bit=0), reg(10, "bit", bit=3, name="other"), reg(9, "int32")]
    assert plan_reads(regs, max_gap=0) == (ReadBlock("holding", 9, 2),)


def test_single_register_devices_get_one_read_per_address() -> None:
    regs = [reg(0, "float32"), reg(2), reg(8)]
    assert plan_reads(regs, max_gap=10, single=True) == tuple(
        ReadBlock("holding", a, 1) for a in (0, 1, 2, 8)
    )


def write_config(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(devices.replace("MAP", str(PUMP_MAP)))
    return path


def test_devices_section_loads(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path,
            '[[devices]]\nname = "pump"\ntransport = "tcp"\nhost = "127.0.0.1"\nmap = "MAP"\n'
            '[[devices]]\nname = "bus"\ntransport = "rtu"\nmap = "MAP"\nunit = 3\n'
            '[devices.serial]\nport = "/dev/ttyUSB0"\nbaudrate = 9600\nparity = "E"\n',
        )
    )
    assert [d.name for d in cfg.devices] == ["pump", "bus"]
    assert cfg.devices[1].serial is not None
    assert cfg.devices[1].serial.parity == "E"
    assert cfg.devices[0].register_map.register("temperature") is not None


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ('[[devices]]\nname = "a"\ntransport = "tcp"\nmap = "MAP"\n', "needs host"),
        (
            '[[devices]]\nname = "a"\ntransport = "rtu"\nhost = "x"\nmap = "MAP"\n',
            "needs \\[devices.serial\\]",
        ),
        (
            '[[devices]]\nname = "a"\ntransport = "tcp"\nhost = "x"\nmap = "nowhere.toml"\n',
            "no such register map",
        ),
        (
            '[[devices]]\nname = "a"\ntransport = "tcp"\nhost = "x"\nmap = "MAP"\n'
            '[[devices]]\nname = "b"\ntransport = "tcp"\nhost = "x"\nmap = "MAP"\ntimeout_s = 2\n',
            "share a connection",
        ),
        (
            '[[devices]]\nname = "a"\ntransport = "tcp"\nhost = "x"\nmap = "MAP"\n'
            '[[devices]]\nname = "b"\ntransport = "tcp"\nhost = "x"\nmap = "MAP"\n',
            "unit 1 is used twice",
        ),
        (
            '[[devices]]\nname = "a"\ntransport = "udp"\nhost = "x"\nmap = "MAP"\n',
            "devices.0.transport",
        ),
    ],
)
def test_bad_devices_are_refused_with_the_key(tmp_path: Path, devices: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, devices))
