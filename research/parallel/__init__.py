"""Device meshes, logical-axis sharding rules and multi-process start-up."""
