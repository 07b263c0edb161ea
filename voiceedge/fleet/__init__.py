"""The fleet: the transceiver registry, the front door's choice of transceiver, drain, the internal API."""
