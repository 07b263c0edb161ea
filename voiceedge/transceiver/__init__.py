"""voiceedge.transceiver."""
