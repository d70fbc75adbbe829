"""Serving metrics: collection loops, exposition rendering and the HTTP endpoint, shared by
the node agent, the controller and the notifier."""
