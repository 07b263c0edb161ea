package main

import (
	_ "embed"
	"encoding/binary"
	"fmt"
)

// Real Opus packets (20 ms, 48 kHz mono, 32 kbit/s VBR) made by gen_audio.py.
var (
	//go:embed audio/speech.opus20
	speechOpus []byte
	//go:embed audio/tone.opus20
	toneOpus []byte
)

// audioSources maps --audio to its packets, looped by the sender.
var audioSources = map[string][][]byte{
	"speech": mustSplit("speech", speechOpus),
	"tone":   mustSplit("tone", toneOpus),
}

// mustSplit cuts a file of (2-byte big-endian length, packet) records into packets.
func mustSplit(name string, b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 2 || int(binary.BigEndian.Uint16(b))+2 > len(b) {
			panic(fmt.Sprintf("audio/%s.opus20 is truncated", name))
		}
		n := int(binary.BigEndian.Uint16(b))
		out = append(out, b[2:2+n])
		b = b[2+n:]
	}
	if len(out) == 0 {
		panic(fmt.Sprintf("audio/%s.opus20 is empty", name))
	}
	return out
}
