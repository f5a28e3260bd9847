"""The one composition place: coordinator and partner nodes put together. The embedded
federation (real processes on loopback), the in-process twin (node agents called through their
own reply path), and the synthetic and example data they run on. It is the only code of
`coordinator/` that imports `node_agent` (a test enforces it)."""
