"""The server runtime: sockets, the event loop, the disk writer, metrics, configuration and the
command line around a node's pure core."""
