"""Central side, by concern:

- `run/`: running analyses on a federation through the `Transport` seam (orchestration, model
  drivers, outputs);
- `deploy/`: the coordinator's processes and trust (config, SuperLink and Fleet proxy, PKI, the
  one module that speaks Flower);
- `blueprints/`: published analyses (runner, registry, report, geography, exports);
- `embedded/`: the one place that puts coordinator and nodes together (the embedded federation,
  the in-process twin, synthetic and example data); no other module imports `node_agent`;
- `cli.py`: the `oda` command.
"""
