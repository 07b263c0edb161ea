package main

import (
	"strings"
	"testing"
)

const restartOffer = "v=0\r\n" +
	"o=- 1 2 IN IP4 0.0.0.0\r\n" +
	"s=-\r\n" +
	"t=0 0\r\n" +
	"a=group:BUNDLE 0 1\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" +
	"a=mid:0\r\n" +
	"a=ice-ufrag:newU\r\n" +
	"a=ice-pwd:newPasswordNewPassword\r\n" +
	"a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n" +
	"a=end-of-candidates\r\n" +
	"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" +
	"a=mid:1\r\n" +
	"a=ice-ufrag:newU\r\n" +
	"a=ice-pwd:newPasswordNewPassword\r\n" +
	"a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"

const firstAnswer = "v=0\r\n" +
	"o=- 3 4 IN IP4 0.0.0.0\r\n" +
	"s=-\r\n" +
	"t=0 0\r\n" +
	"a=ice-lite\r\n" +
	"a=ice-ufrag:oldServer\r\n" +
	"a=ice-pwd:oldServerPassword\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" +
	"a=mid:0\r\n" +
	"a=candidate:1 1 udp 2130706431 127.0.0.1 3478 typ host\r\n" +
	"a=end-of-candidates\r\n" +
	"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" +
	"a=mid:1\r\n"

func TestSDPFragForRestartCarriesCredentialsAndFirstSectionCandidates(t *testing.T) {
	frag, err := sdpFragForRestart(restartOffer)
	if err != nil {
		t.Fatal(err)
	}
	want := "a=ice-options:trickle ice2\r\n" +
		"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n" +
		"a=ice-ufrag:newU\r\na=ice-pwd:newPasswordNewPassword\r\n" +
		"a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n" +
		"a=end-of-candidates\r\n"
	if frag != want {
		t.Fatalf("sdpfrag:\n%q\nwant\n%q", frag, want)
	}
}

func TestSDPFragForRestartNeedsCredentials(t *testing.T) {
	if _, err := sdpFragForRestart("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"); err == nil {
		t.Fatal("no error for an offer without ICE credentials")
	}
}

func TestAnswerWithFragReplacesCredentialsAndCandidates(t *testing.T) {
	frag := "a=ice-lite\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n" +
		"a=ice-ufrag:newServer\r\na=ice-pwd:newServerPassword\r\n" +
		"a=candidate:2 1 udp 2130706431 127.0.0.1 3479 typ host\r\na=end-of-candidates\r\n"
	answer, err := answerWithFrag(firstAnswer, frag)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(answer, "oldServer") || strings.Contains(answer, " 3478 ") {
		t.Fatalf("old credentials or candidate left:\n%s", answer)
	}
	for _, line := range []string{"a=ice-ufrag:newServer", "a=ice-pwd:newServerPassword", "a=candidate:2 1 udp 2130706431 127.0.0.1 3479 typ host", "a=ice-lite", "a=mid:1"} {
		if !strings.Contains(answer, line+"\r\n") {
			t.Fatalf("%q missing:\n%s", line, answer)
		}
	}
	if strings.Count(answer, "a=end-of-candidates") != 1 {
		t.Fatalf("want one a=end-of-candidates:\n%s", answer)
	}
}

func TestAnswerWithFragKeepsCandidatesWhenTheFragmentHasNone(t *testing.T) {
	answer, err := answerWithFrag(firstAnswer, "a=ice-ufrag:u2\na=ice-pwd:p2p2p2p2p2p2p2p2p2p2p2\n")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(answer, " 3478 typ host") || !strings.Contains(answer, "a=ice-ufrag:u2\r\n") {
		t.Fatalf("answer:\n%s", answer)
	}
}

func TestAnswerWithFragRejectsAFragmentWithoutCredentials(t *testing.T) {
	if _, err := answerWithFrag(firstAnswer, "a=candidate:1 1 udp 1 127.0.0.1 1 typ host\r\n"); err == nil {
		t.Fatal("no error")
	}
}

func TestHistogramPercentiles(t *testing.T) {
	var h histogram
	for i := 0; i < 98; i++ {
		h.add(20.02)
	}
	h.add(150.4)
	h.add(3500)
	if p := h.pct(50); p < 20 || p > 20.1 {
		t.Fatalf("p50 %v", p)
	}
	if p := h.pct(99); p < 150 || p > 151 {
		t.Fatalf("p99 %v", p)
	}
	if h.max != 3500 || h.pct(100) != 3500 {
		t.Fatalf("max %v p100 %v", h.max, h.pct(100))
	}
	var m histogram
	m.merge(&h)
	if m.n != 100 || m.pct(50) != h.pct(50) {
		t.Fatalf("merged n %d", m.n)
	}
}
