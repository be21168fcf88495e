"""Lectern's node agent: the local cluster's only node, a kubelet that runs each pod's container
as a process on this machine (see agent.py; started by hack/cluster.py)."""
