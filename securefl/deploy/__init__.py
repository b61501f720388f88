"""A federation across machines: its PKI, its federation.toml, the server's checkpoints, the programs."""
