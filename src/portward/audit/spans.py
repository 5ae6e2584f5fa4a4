"""Sets of addresses as sorted, disjoint, non-adjacent (first, last) integer intervals.

The exposure evaluator splits "every source address" by the address matches of a live ruleset; block
sets hold 100,000 intervals, so every operation here is one linear merge of two sorted lists.
"""

from __future__ import annotations

from bisect import bisect_right

from portward.policy.addresses import V4_MAX, V6_MAX, merge_spans, parse_address, prefix_length

Spans = tuple[tuple[int, int], ...]

EMPTY: Spans = ()


def full(family: int) -> Spans:
    return ((0, V4_MAX if family == 4 else V6_MAX),)


def normalize(spans: list[tuple[int, int]]) -> Spans:
    return tuple(merge_spans(spans))


def union(a: Spans, b: Spans) -> Spans:
    if not a:
        return b
    if not b:
        return a
    return normalize([*a, *b])


def intersect(a: Spans, b: Spans) -> Spans:
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        first = max(a[i][0], b[j][0])
        last = min(a[i][1], b[j][1])
        if first <= last:
            out.append((first, last))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def subtract(a: Spans, b: Spans) -> Spans:
    if not a or not b:
        return a
    out: list[tuple[int, int]] = []
    j = 0
    for first, last in a:
        while j < len(b) and b[j][1] < first:
            j += 1
        k = j
        current = first
        while k < len(b) and b[k][0] <= last:
            if b[k][0] > current:
                out.append((current, b[k][0] - 1))
            current = max(current, b[k][1] + 1)
            k += 1
        if current <= last:
            out.append((current, last))
    return tuple(out)


def contains(spans: Spans, value: int) -> bool:
    index = bisect_right(spans, (value, 1 << 129)) - 1
    return index >= 0 and spans[index][0] <= value <= spans[index][1]


def size(spans: Spans) -> int:
    return sum(last - first + 1 for first, last in spans)


def around(spans: Spans, value: int, low: int, high: int) -> tuple[int, int]:
    """The widest interval around `value` (within low..high) where membership in `spans` does not change."""
    index = bisect_right(spans, (value, 1 << 129)) - 1
    if index >= 0 and spans[index][0] <= value <= spans[index][1]:
        return max(low, spans[index][0]), min(high, spans[index][1])
    left = spans[index][1] + 1 if index >= 0 else low
    right = spans[index + 1][0] - 1 if index + 1 < len(spans) else high
    return max(low, left), min(high, right)


def from_text(family: int, text: str) -> Spans:
    """'198.18.0.0/24', '198.18.0.1', '198.18.0.1-198.18.0.9' of `family`; () for the other family."""
    if "-" in text and "/" not in text and text.count("-") == 1:
        first_text, last_text = text.split("-")
        f1, first = parse_address(first_text)
        _f2, last = parse_address(last_text)
        return ((first, last),) if f1 == family else EMPTY
    address, _slash, length = text.partition("/")
    f, value = parse_address(address)
    if f != family:
        return EMPTY
    width = 32 if family == 4 else 128
    bits = width - int(length) if length else 0
    first = value >> bits << bits
    return ((first, first + (1 << bits) - 1),)


def is_cidr(family: int, first: int, last: int) -> bool:
    return prefix_length(family, first, last) is not None
