"""libnftables, in process: run JSON command batches and read the portward table back.

Each `run` is one kernel transaction: nft sends the whole batch between BATCH_BEGIN and BATCH_END,
and the kernel applies all of it or none.
"""

from __future__ import annotations

from typing import Any

from portward.dialects.nft import FAMILY, TABLE, ChainSpec, Ruleset, RuleSpec, SetSpec
from portward.errors import PortwardError
from portward.policy.addresses import parse_address, parse_net

Json = dict[str, Any]


class KernelError(PortwardError):
    """nftables refused a command (exit code 1)."""


class Nft:
    """A libnftables context with JSON output; one per process is plenty."""

    def __init__(self) -> None:
        try:
            import nftables
        except (ImportError, OSError) as error:  # OSError: libnftables.so.1 missing
            raise KernelError(
                f"cannot load libnftables ({error}) — install the 'nftables' package (apt-get install nftables)"
            ) from None
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def run(self, commands: list[Json]) -> list[Json]:
        if not commands:
            return []
        code, output, error = self._nft.json_cmd({"nftables": commands})
        if code != 0:
            raise KernelError(f"nftables refused the change: {_first_lines(error)} — nothing was changed")
        return list(output.get("nftables", [])) if isinstance(output, dict) else []

    def run_text(self, text: str) -> None:
        code, _output, error = self._nft.cmd(text)
        if code != 0:
            raise KernelError(f"nftables refused the change: {_first_lines(error)} — nothing was changed")

    def list_text(self, what: str) -> str:
        self._nft.set_json_output(False)
        try:
            code, output, error = self._nft.cmd(f"list {what}")
        finally:
            self._nft.set_json_output(True)
        if code != 0:
            raise KernelError(f"cannot list {what}: {_first_lines(error)}")
        return str(output)

    def list_table(self, family: str = FAMILY, name: str = TABLE) -> list[Json] | None:
        """The table's objects as `nft -j list table` gives them, or None when it does not exist."""
        code, output, error = self._nft.json_cmd({"nftables": [{"list": {"table": {"family": family, "name": name}}}]})
        if code != 0:
            if "No such file or directory" in error:
                return None
            raise KernelError(f"cannot read table {family} {name}: {_first_lines(error)}")
        return [item for item in output.get("nftables", []) if "metainfo" not in item]

    def list_ruleset(self) -> list[Json]:
        code, output, error = self._nft.json_cmd({"nftables": [{"list": {"ruleset": None}}]})
        if code != 0:
            raise KernelError(f"cannot read the ruleset: {_first_lines(error)}")
        return [item for item in output.get("nftables", []) if "metainfo" not in item]

    def table_exists(self, family: str = FAMILY, name: str = TABLE) -> bool:
        code, output, _error = self._nft.json_cmd({"nftables": [{"list": {"tables": None}}]})
        if code != 0:
            return False
        return any(
            item.get("table", {}).get("family") == family and item["table"].get("name") == name
            for item in output.get("nftables", [])
        )


def _first_lines(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not set(line.strip()) <= {"^", "~", " "}]
    return " / ".join(lines[:3]) if lines else "(no message)"


def parse_elements(family: int, items: list[Any]) -> tuple[tuple[int, int], ...]:
    """Listed interval elements -> sorted (first, last) integer ranges."""
    spans: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, dict) and "elem" in item:
            item = item["elem"]["val"]
        if isinstance(item, str):
            _family, value = parse_address(item)
            spans.append((value, value))
        elif "prefix" in item:
            net = parse_net(f"{item['prefix']['addr']}/{item['prefix']['len']}")
            spans.append((net.first, net.last))
        elif "range" in item:
            spans.append((parse_address(item["range"][0])[1], parse_address(item["range"][1])[1]))
    return tuple(sorted(spans))


def ruleset_from_listing(listing: list[Json]) -> Ruleset:
    """The live table in the compiler's terms (handles dropped, elements of address sets as ranges)."""
    ruleset = Ruleset()
    for item in listing:
        if "set" in item:
            body = item["set"]
            kind = body["type"]
            kind = tuple(kind) if isinstance(kind, list) else kind
            flags = tuple(body.get("flags", ()))
            managed = "interval" in flags and kind in ("ipv4_addr", "ipv6_addr")
            ruleset.sets[body["name"]] = SetSpec(
                name=body["name"],
                type=kind,
                flags=flags,
                timeout=body.get("timeout"),
                size=body.get("size"),
                elements=parse_elements(6 if kind == "ipv6_addr" else 4, body.get("elem", [])) if managed else None,
                comment=body.get("comment"),
            )
        elif "chain" in item:
            body = item["chain"]
            ruleset.chains[body["name"]] = ChainSpec(
                body["name"], body.get("hook"), body.get("prio", 0), body.get("policy"), body.get("type", "filter")
            )
        elif "rule" in item:
            body = item["rule"]
            ruleset.rules.append(RuleSpec(body["chain"], tuple(body["expr"]), body.get("comment")))
    return ruleset
