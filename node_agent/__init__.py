"""Partner side: config, data connectors, policy, ledger, Flower client adapter, `oda-node`."""
