"""Field types the config's sections share."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is None or path.is_absolute():
        return path
    return (Path(base) / path).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve)]


def split_endpoint(entry: str, default_port: int) -> tuple[str, int]:
    """A broker endpoint, `host`, `host:port` or `[ipv6]:port`, as (host, port)."""
    host, port = entry, ""
    if entry.startswith("["):
        address, bracket, rest = entry[1:].partition("]")
        host = address if bracket and rest[:1] in ("", ":") and _is_ipv6(address) else ""
        port = rest[1:]
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    elif ":" in entry:
        host = ""  # IPv6 without brackets: its port cannot be told from the address
    if not host or any(c.isspace() or c in "/[]@" for c in host) or not (port or "0").isdigit():
        raise ValueError(f"{entry!r} is not a broker endpoint: expected \"host\", "
                         "\"host:port\" or \"[ipv6]:port\"")  # fmt: skip
    if port and not 1 <= int(port) <= 65535:
        raise ValueError(f"{entry!r}: the port must be 1 to 65535")
    return host, int(port) if port else default_port


def _is_ipv6(address: str) -> bool:
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _check_endpoint(entry: str) -> str:
    split_endpoint(entry, 0)
    return entry


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
