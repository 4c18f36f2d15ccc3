"""One prune run: the pipeline, the acceptance gates around it, the latency search, and the outputs
written as one transaction."""
