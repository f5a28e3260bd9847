"""Central side: Flower server adapter, orchestration, outputs, the embedded federation, `oda`."""
