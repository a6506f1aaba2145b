"""Bridges: processes beside the daemon that carry its results to what a factory line speaks.

Each bridge is a ZeroMQ client of the daemon like any subscriber or archiver (DESIGN §1: bridges and
viewers sit beside the daemon, never inside it), so a bridge that is slow, down or killed never
slows inspection. ``proad-bridge mqtt`` publishes into the plant's MQTT broker, ``proad-bridge
opcua`` serves an OPC UA address space for a PLC, ``proad-view`` (:mod:`proad.edge.view`) shows the
line to an operator in a browser. Their shared part, where the daemon is and with which keys, is
:class:`~proad.edge.bridges.link.DaemonLink`.
"""
