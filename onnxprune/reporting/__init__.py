"""What a run reports: the JSON run report and its printed summary, the report folder and its plots."""
