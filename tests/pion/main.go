// Command pionpeer is an independent WebRTC client on Pion v3, for voiceedge's
// tests and benchmarks. It speaks only the HTTP conventions every WHIP or
// OpenAI Realtime style endpoint shares: POST an SDP offer (application/sdp),
// 201 Created with a Location and the answer, PATCH the Location for an ICE
// restart, DELETE it to hang up, an optional Bearer token.
//
//	pionpeer call --url URL [--seconds 5] [--datachannel oai-events] [--event JSON]...
//	pionpeer load --url URL --n 100 --ramp 10 --seconds 30 [--server-pid PID]...
//
// Each subcommand prints exactly one JSON object on stdout; Pion's own log
// lines go to stderr. The exit status is 0 when every call went as asked.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"
)

// options are the flags every subcommand shares.
type options struct {
	url           string
	token         string
	headers       stringList
	dcLabel       string
	events        stringList
	audio         string
	hostIP        string
	setupTimeout  time.Duration
	httpTimeout   time.Duration
	interceptors  bool
	midExt        bool
	iceDisconnect time.Duration
	iceFailed     time.Duration
	iceKeepalive  time.Duration
	keepMessages  int
	withSDP       bool
	cpuProfile    string
}

// stringList is a flag that may be given several times.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func addCommonFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.url, "url", "", "signaling URL: the SDP offer is POSTed here (required)")
	fs.StringVar(&o.token, "token", "", "bearer token: sends Authorization: Bearer TOKEN on every request")
	fs.Var(&o.headers, "header", `extra request header "Name: value" (repeatable)`)
	fs.StringVar(&o.dcLabel, "datachannel", "oai-events", `data channel label; "" offers audio only`)
	fs.Var(&o.events, "event", "JSON text sent on the data channel once it opens, in order (repeatable)")
	fs.StringVar(&o.audio, "audio", "speech", "what the microphone sends: speech (espeak-ng sentences) or tone (440 Hz), real Opus")
	fs.StringVar(&o.hostIP, "host-ip", "127.0.0.1", "the one local IP to gather a host candidate on")
	fs.DurationVar(&o.setupTimeout, "setup-timeout", 10*time.Second, "give up when no audio arrives this long after the start")
	fs.DurationVar(&o.httpTimeout, "http-timeout", 10*time.Second, "timeout of each HTTP request")
	fs.BoolVar(&o.interceptors, "interceptors", true, "Pion's default interceptors: RTCP sender/receiver reports, NACK, transport-cc feedback")
	fs.BoolVar(&o.midExt, "mid-ext", false, "offer the sdes:mid RTP header extension on audio, as browsers do")
	fs.DurationVar(&o.iceDisconnect, "ice-disconnected-timeout", 5*time.Second, "Pion's ICE disconnected timeout")
	fs.DurationVar(&o.iceFailed, "ice-failed-timeout", 25*time.Second, "Pion's ICE failed timeout, after disconnected")
	fs.DurationVar(&o.iceKeepalive, "ice-keepalive", 2*time.Second, "Pion's ICE keepalive: a binding request when nothing was sent or received this long")
	fs.IntVar(&o.keepMessages, "keep-messages", 20, "data-channel messages kept verbatim in the result")
	fs.BoolVar(&o.withSDP, "sdp", false, "include the offer and answer SDP in the result")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write this process's CPU profile here (go tool pprof)")
}

// startProfile starts the CPU profile asked for; the returned function stops it.
func (o *options) startProfile() (func(), error) {
	if o.cpuProfile == "" {
		return func() {}, nil
	}
	f, err := os.Create(o.cpuProfile)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func (o *options) check() error {
	if o.url == "" {
		return errors.New("--url is required")
	}
	if _, ok := audioSources[o.audio]; !ok {
		return fmt.Errorf("--audio %q: want speech or tone", o.audio)
	}
	for _, h := range o.headers {
		if name, _, ok := strings.Cut(h, ":"); !ok || strings.TrimSpace(name) == "" {
			return fmt.Errorf(`--header %q: want "Name: value"`, h)
		}
	}
	for _, e := range o.events {
		if !json.Valid([]byte(e)) {
			return fmt.Errorf("--event %q is not JSON", e)
		}
	}
	if net.ParseIP(o.hostIP) == nil {
		return fmt.Errorf("--host-ip %q is not an IP address", o.hostIP)
	}
	return nil
}

// newAPI builds a Pion API: host candidates on --host-ip only (loopback
// allowed), UDP over IPv4, no mDNS. A non-nil mux carries every packet of
// the calls made with this API (used to move the client to a new port).
func newAPI(o *options, logs *logSink, mux ice.UDPMux) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	if o.midExt {
		if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.SDESMidURI}, webrtc.RTPCodecTypeAudio); err != nil {
			return nil, err
		}
	}
	ir := &interceptor.Registry{}
	if o.interceptors {
		if err := webrtc.RegisterDefaultInterceptors(m, ir); err != nil {
			return nil, err
		}
	}
	se := webrtc.SettingEngine{LoggerFactory: logs}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	want := net.ParseIP(o.hostIP)
	if want.IsLoopback() {
		se.SetIncludeLoopbackCandidate(true)
	}
	se.SetIPFilter(func(ip net.IP) bool { return ip.Equal(want) })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICETimeouts(o.iceDisconnect, o.iceFailed, o.iceKeepalive)
	if mux != nil {
		se.SetICEUDPMux(mux)
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), nil
}

func newHTTPClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	tr.Proxy = nil // loopback and lab servers: never through a proxy from the environment
	return &http.Client{Timeout: timeout, Transport: tr}
}

func printJSON(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pionpeer: json:", err)
		os.Exit(2)
	}
	fmt.Println(string(b))
}

// usageError prints a flag error as the JSON result and returns exit status 2
// (0 for -h, which has printed the flags).
func usageError(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(os.Stderr, "pionpeer:", err)
	printJSON(map[string]interface{}{"ok": false, "error": err.Error()})
	return 2
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  pionpeer call --url URL [--seconds 5] [--datachannel oai-events] [--event JSON]... [--restart-at S] [--rebind-at S]
  pionpeer load --url URL --n N [--ramp R] [--seconds S] [--server-pid PID]...
"pionpeer call -h" and "pionpeer load -h" list every flag.
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "call":
		os.Exit(cmdCall(ctx, os.Args[2:]))
	case "load":
		os.Exit(cmdLoad(ctx, os.Args[2:]))
	default:
		usage()
	}
}
