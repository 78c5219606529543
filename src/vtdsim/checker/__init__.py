"""The interleaving checker: explores driver threads together with the hardware's freedom to
fill and evict caches, and explains every violation it finds."""
