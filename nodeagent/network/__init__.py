"""Host networking of the node agent: bridge, TAPs and iptables rules."""
