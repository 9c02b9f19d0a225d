"""Network building blocks shared by several methods (each paper's own network is in its method package)."""
