"""``steward demo``: the whole loop on an embedded simulated cluster, no cloud, no cluster."""
