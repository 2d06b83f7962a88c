"""`whaleid chaos`: the fault-injection suite (scenarios, workloads, hostile inputs) on the embedded stack."""
