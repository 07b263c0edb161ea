package main

import (
	"strings"
	"testing"
)

const offer = "v=0\r\n" +
	"a=group:BUNDLE 0 1\r\n" +
	"a=ice-ufrag:old1\r\n" +
	"a=ice-pwd:oldPasswordOldPassword\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" +
	"a=mid:0\r\n" +
	"a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n" +
	"a=end-of-candidates\r\n" +
	"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" +
	"a=mid:1\r\n" +
	"a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"

func TestParseFragReadsCredentialsAndFirstSectionCandidates(t *testing.T) {
	f := parseFrag("a=ice-options:trickle ice2\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n" +
		"a=ice-ufrag:new1\r\na=ice-pwd:newPasswordNewPassword\r\n" +
		"a=candidate:2 1 udp 2130706431 127.0.0.1 6000 typ host\r\na=end-of-candidates\r\n")
	if f.ufrag != "new1" || f.pwd != "newPasswordNewPassword" || f.mid != "0" || len(f.candidates) != 1 {
		t.Fatalf("%+v", f)
	}
}

func TestWithICEMakesTheRestartOffer(t *testing.T) {
	f := frag{ufrag: "new1", pwd: "newPasswordNewPassword", candidates: []string{"a=candidate:2 1 udp 2130706431 127.0.0.1 6000 typ host"}}
	got := withICE(offer, f)
	if strings.Contains(got, "old1") || strings.Contains(got, " 5000 ") {
		t.Fatalf("old credentials or candidates left:\n%s", got)
	}
	if !strings.Contains(got, "a=ice-ufrag:new1\r\n") || strings.Count(got, " 6000 typ host") != 1 {
		t.Fatalf("restart offer:\n%s", got)
	}
	if i, j := strings.Index(got, "a=mid:0"), strings.Index(got, " 6000 "); j < i {
		t.Fatalf("candidate before its m= section:\n%s", got)
	}
}
