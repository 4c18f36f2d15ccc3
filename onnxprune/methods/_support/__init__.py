"""Machinery shared by the registered methods: channel gates, threshold masks, LC projections,
the differentiable MAC resource, compaction, recalibration, the trail, and the channel baselines."""
