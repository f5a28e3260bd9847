"""The coordinator as deployed: its config, CA and certificates, the SuperLink on loopback, the
Fleet-only TLS proxy in front of it, and `flower.py`, the coordinator side's one module that
speaks Flower (runs, node registration, and the `Transport` over Flower)."""
