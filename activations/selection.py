"""Step and layer selections such as ``0-9,20,49``, ``0-39:4`` or ``all``, checked against a count."""

from __future__ import annotations

import re

_PART = re.compile(r"^(?P<start>\d+)(?:-(?P<stop>\d+)(?::(?P<stride>\d+))?)?$")


def parse_index_spec(spec: str | int | list[int] | tuple[int, ...], count: int, what: str = "index") -> list[int]:
    """Sorted unique indices in ``[0, count)``; ranges are inclusive (``0-9`` is ten indices).

    Raises ValueError naming the offending part, e.g. ``layer 99 is out of range: the model has 40``.
    """
    if count < 1:
        raise ValueError(f"cannot select a {what}: there are none")
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        indices = [int(i) for i in spec]
    else:
        text = spec.strip().lower().replace(" ", "")
        if text in ("all", "*", ""):
            return list(range(count))
        indices = []
        for part in text.split(","):
            match = _PART.match(part)
            if match is None:
                raise ValueError(f"bad {what} selection {part!r} in {spec!r}: use e.g. '0-9,20,49', '0-39:4' or 'all'")
            start = int(match.group("start"))
            stop = int(match.group("stop")) if match.group("stop") is not None else start
            stride = int(match.group("stride") or 1)
            if stop < start or stride < 1:
                raise ValueError(f"bad {what} range {part!r}: need start <= stop and a positive stride")
            last = start + (stop - start) // stride * stride
            if last >= count:  # say so before building the range: '0-99999999999' must not fill memory
                first_bad = start if start >= count else start + -(-(count - start) // stride) * stride
                indices.append(first_bad)
                break
            indices.extend(range(start, stop + 1, stride))
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(
            f"{what} {bad[0]} is out of range: there {'is' if count == 1 else 'are'} {count} ({what}s 0-{count - 1})"
        )
    return sorted(set(indices))
