"""Where and how programs run: the device mesh and sharding, the compilation cache, precision."""
