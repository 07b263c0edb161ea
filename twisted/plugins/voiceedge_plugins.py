"""twistd plugins of voiceedge; the heavy imports live in each tap module."""

from twisted.application.service import ServiceMaker

voiceedge = ServiceMaker(
    "voiceedge", "voiceedge.tap", "voiceedge all-in-one: signaling, transceiver, echo agent", "voiceedge"
)
voiceedge_transceiver = ServiceMaker(
    "voiceedge-transceiver",
    "voiceedge.transceiver.tap",
    "voiceedge transceiver: ICE-lite, DTLS-SRTP and RTP on one UDP socket",
    "voiceedge-transceiver",
)
voiceedge_relay = ServiceMaker("voiceedge-relay", "voiceedge.relay.tap", "voiceedge relay: one public UDP port, routes by the token in the ICE ufrag", "voiceedge-relay")
voiceedge_signaling = ServiceMaker(
    "voiceedge-signaling",
    "voiceedge.signaling.tap",
    "voiceedge front door: places each call on a transceiver of the fleet, by region and load",
    "voiceedge-signaling",
)
