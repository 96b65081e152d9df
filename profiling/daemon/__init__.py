"""The profiling daemon: its service loop, config, socket server, ring, spool, wire and client."""
