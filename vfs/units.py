"""Byte sizes as people write them (`64MiB`, `1.5G`, `500MB`) and back.

One parser for every size vfs reads from a command line or a config file, so `--size 64MiB` and
`ram = "64MiB"` mean the same thing everywhere.

Units, case-insensitive: `B`; IEC `KiB MiB GiB TiB PiB` (powers of 1024); SI `kB MB GB TB PB` (powers of
1000); bare `K M G T P` are IEC (as in `dd`, `sort -S` and most cache settings). A fraction is
allowed when the result is a whole number of bytes (`1.5KiB` = 1536, `0.5B` is an error).
"""

from __future__ import annotations

import decimal
import logging
import re

log = logging.getLogger(__name__)

_IEC = ("KiB", "MiB", "GiB", "TiB", "PiB")
_MULTIPLIERS: dict[str, int] = {"": 1, "b": 1}
for _power, _unit in enumerate(_IEC, start=1):
    _MULTIPLIERS[_unit.lower()] = 1024**_power
    _MULTIPLIERS[_unit[0].lower()] = 1024**_power
    _MULTIPLIERS[_unit[0].lower() + "b"] = 1000**_power

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in `text` (`"64MiB"`, `"1.5G"`, `"4096"`, or an int); ValueError if it is not a size."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r} (write e.g. 4096 or \"64MiB\")")
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (write e.g. 4096, 64MiB, 1.5GiB, 500MB)")
    number, unit = match.groups()
    multiplier = _MULTIPLIERS.get(unit.lower())
    if multiplier is None:
        raise ValueError(f"unknown size unit {unit!r} in {text!r}; one of B, KiB, MiB, GiB, TiB, PiB, kB, MB, GB, TB, PB, K, M, G, T, P")
    value = decimal.Decimal(number) * multiplier
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    """`size` bytes in the largest IEC unit it reaches (`64MiB`, `1.5GiB`, `100B`), for display: rounded
    to two decimals, so parse_size reads it back only when that is exact."""
    if size < 0:
        return "-" + format_size(-size)
    for power in range(len(_IEC), 0, -1):
        unit = 1024**power
        if size >= unit:
            text = f"{size / unit:.2f}".rstrip("0").rstrip(".")
            return f"{text}{_IEC[power - 1]}"
    return f"{size}B"
