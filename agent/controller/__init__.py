"""The controller: leader election, cluster-scope collectors, scheduled hygiene jobs."""
