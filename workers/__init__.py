"""The per-interface worker process: socket I/O around the portier engine."""
