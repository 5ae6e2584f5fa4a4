"""portward: who can reach this host, applied atomically through nftables and proven from outside."""

__version__ = "0.1.0"
