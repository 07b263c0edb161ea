// Command pionecho is a WebRTC echo server on Pion v3, the same service as
// voiceedge's echo agent without transcoding, for side-by-side benchmarks
// (setup latency, CPU and memory per call) and as a plain target for tests.
//
//   - POST /offer (also /v1/realtime/calls, /whip), an SDP offer as
//     application/sdp: 201 Created, the answer, Location: <path>/<id>.
//   - PATCH <Location>: ICE restart, as a full re-offer (application/sdp;
//     the answer comes back in full) or as a WHIP sdpfrag
//     (application/trickle-ice-sdpfrag, RFC 9725 §4.3.2; the server's new
//     credentials come back as an sdpfrag). An sdpfrag without new
//     credentials adds trickled candidates (204).
//   - DELETE <Location>: hang up (204).
//   - GET /healthz: "ok sessions=N created=N ..." as key=value words.
//
// ICE-lite, every session on one shared UDP port (Pion's ICE UDP mux), the
// DTLS server role as voiceedge takes it. Inbound Opus RTP payloads go back
// unchanged on the session's own outbound stream; data-channel messages go
// back on their channel. At start it prints one JSON line on stdout with the
// addresses it listens on (pass port 0 for a free one).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v3"
)

const (
	typeSDP     = "application/sdp"
	typeSDPFrag = "application/trickle-ice-sdpfrag"
)

// collections are the paths an offer may be POSTed to.
var collections = []string{"/offer", "/v1/realtime/calls", "/whip"}

// session is one call: its PeerConnection and the last remote offer, which
// an sdpfrag ICE restart rewrites into a full one.
type session struct {
	id    string
	pc    *webrtc.PeerConnection
	mu    sync.Mutex // one renegotiation at a time
	offer string
	etag  string // changes with each ICE restart
}

type server struct {
	api      *webrtc.API
	token    string
	mu       sync.Mutex
	sessions map[string]*session
	created  atomic.Int64
	closed   atomic.Int64
	restarts atomic.Int64
	rtpIn    atomic.Int64
	rtpOut   atomic.Int64
	dcMsgs   atomic.Int64
	answerMs atomic.Int64 // total time spent building answers, µs
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *server) remove(sess *session) {
	s.mu.Lock()
	cur, ok := s.sessions[sess.id]
	if ok && cur == sess {
		delete(s.sessions, sess.id)
	}
	s.mu.Unlock()
	if ok && cur == sess {
		s.closed.Add(1)
	}
	go sess.pc.Close()
}

func (s *server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.token == "" || r.Header.Get("Authorization") == "Bearer "+s.token {
		return true
	}
	w.Header().Set("WWW-Authenticate", "Bearer")
	http.Error(w, "unauthorized", http.StatusUnauthorized)
	return false
}

// cors lets a browser page on another origin call us.
func cors(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "POST, PATCH, DELETE, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, If-Match")
	h.Set("Access-Control-Expose-Headers", "Location, ETag")
}

func readSDPBody(w http.ResponseWriter, r *http.Request, want ...string) (string, string, bool) {
	ct := strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0])
	for _, t := range want {
		if ct == t {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return "", "", false
			}
			return ct, string(body), true
		}
	}
	http.Error(w, "Content-Type must be one of "+strings.Join(want, ", "), http.StatusUnsupportedMediaType)
	return "", "", false
}

// negotiate applies a remote offer and returns the complete local answer
// (ICE-lite gathers its one host candidate at once).
func negotiate(pc *webrtc.PeerConnection, offer string) (string, error) {
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", fmt.Errorf("bad offer: %w", err)
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("create answer: %w", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(answer); err != nil {
		return "", err
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
		return "", errors.New("ICE gathering did not complete")
	}
	return pc.LocalDescription().SDP, nil
}

func (s *server) handleOffer(w http.ResponseWriter, r *http.Request, collection string) {
	if !s.authorized(w, r) {
		return
	}
	_, offer, ok := readSDPBody(w, r, typeSDP)
	if !ok {
		return
	}
	t0 := time.Now()
	pc, err := s.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	sess := &session{id: newID(), pc: pc, offer: offer}
	sess.etag = `"` + sess.id + `-0"`
	fail := func(code int, err error) {
		_ = pc.Close()
		http.Error(w, err.Error(), code)
	}
	// The echo's own outbound stream, added before the offer is applied so it
	// takes the client's sendrecv audio m-line. Pion writes its own SSRC and
	// payload type; the payload is the client's Opus, untouched.
	out, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pionecho")
	if err != nil {
		fail(http.StatusInternalServerError, err)
		return
	}
	sender, err := pc.AddTrack(out)
	if err != nil {
		fail(http.StatusInternalServerError, err)
		return
	}
	go func() { // read RTCP so that the interceptors see it
		buf := make([]byte, 1500)
		for {
			if _, _, err := sender.Read(buf); err != nil {
				return
			}
		}
	}()
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		for {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			s.rtpIn.Add(1)
			if tr.Kind() != webrtc.RTPCodecTypeAudio {
				continue
			}
			// The client's header extension IDs mean nothing in our direction.
			pkt.Header.Extension = false
			pkt.Header.Extensions = nil
			if err := out.WriteRTP(pkt); err != nil {
				return
			}
			s.rtpOut.Add(1)
		}
	})
	pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			s.dcMsgs.Add(1)
			if m.IsString {
				_ = dc.SendText(string(m.Data))
			} else {
				_ = dc.Send(m.Data)
			}
		})
	})
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateFailed || st == webrtc.PeerConnectionStateClosed {
			s.remove(sess)
		}
	})
	answer, err := negotiate(pc, offer)
	if err != nil {
		fail(http.StatusBadRequest, err)
		return
	}
	s.mu.Lock()
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	s.created.Add(1)
	s.answerMs.Add(time.Since(t0).Microseconds())
	w.Header().Set("Content-Type", typeSDP)
	w.Header().Set("Location", collection+"/"+sess.id)
	w.Header().Set("ETag", sess.etag)
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, answer)
}

func (s *server) handleSession(w http.ResponseWriter, r *http.Request, id string) {
	if !s.authorized(w, r) {
		return
	}
	s.mu.Lock()
	sess, ok := s.sessions[id]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodDelete:
		s.remove(sess)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPatch:
		ct, body, ok := readSDPBody(w, r, typeSDP, typeSDPFrag)
		if !ok {
			return
		}
		sess.mu.Lock()
		defer sess.mu.Unlock()
		if ct == typeSDP {
			answer, err := negotiate(sess.pc, body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			sess.offer = body
			s.restarts.Add(1)
			w.Header().Set("Content-Type", typeSDP)
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, answer)
			return
		}
		s.patchFrag(w, sess, body, r.Header.Get("If-Match"))
	default:
		http.Error(w, "PATCH or DELETE", http.StatusMethodNotAllowed)
	}
}

// patchFrag handles a WHIP sdpfrag: new credentials are an ICE restart
// (answered with ours, RFC 9725 §4.3.2); otherwise trickled candidates.
func (s *server) patchFrag(w http.ResponseWriter, sess *session, body, ifMatch string) {
	frag := parseFrag(body)
	if frag.ufrag == "" {
		for _, c := range frag.candidates {
			init := webrtc.ICECandidateInit{Candidate: strings.TrimPrefix(c, "a=")}
			if err := sess.pc.AddICECandidate(init); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if frag.pwd == "" {
		http.Error(w, "an ICE restart needs a=ice-ufrag and a=ice-pwd", http.StatusBadRequest)
		return
	}
	// RFC 9725 §4.3.2: a restart carries If-Match: * (the wildcard, unquoted).
	switch ifMatch {
	case "":
		http.Error(w, "an ICE restart needs If-Match: *", http.StatusPreconditionRequired)
		return
	case "*", sess.etag:
	default:
		http.Error(w, "If-Match "+ifMatch+" does not match "+sess.etag, http.StatusPreconditionFailed)
		return
	}
	offer := withICE(sess.offer, frag)
	answer, err := negotiate(sess.pc, offer)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sess.offer = offer
	s.restarts.Add(1)
	ours := parseFrag(answer)
	var b strings.Builder
	b.WriteString("a=ice-lite\r\n")
	if ours.media != "" {
		fmt.Fprintf(&b, "%s\r\na=mid:%s\r\n", ours.media, ours.mid)
	}
	fmt.Fprintf(&b, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", ours.ufrag, ours.pwd)
	for _, c := range ours.candidates {
		b.WriteString(c + "\r\n")
	}
	b.WriteString("a=end-of-candidates\r\n")
	sess.etag = `"` + sess.id + `-` + fmt.Sprint(s.restarts.Load()) + `"`
	w.Header().Set("Content-Type", typeSDPFrag)
	w.Header().Set("ETag", sess.etag)
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, b.String())
}

// frag is the ICE part of an SDP or sdpfrag: credentials wherever they are,
// the first m= section and its candidates.
type frag struct {
	ufrag, pwd, media, mid string
	candidates             []string
}

func parseFrag(text string) frag {
	var f frag
	section := -1
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimRight(l, "\r")
		switch {
		case strings.HasPrefix(l, "m="):
			section++
			if section == 0 {
				f.media = l
			}
		case strings.HasPrefix(l, "a=ice-ufrag:") && f.ufrag == "":
			f.ufrag = strings.TrimPrefix(l, "a=ice-ufrag:")
		case strings.HasPrefix(l, "a=ice-pwd:") && f.pwd == "":
			f.pwd = strings.TrimPrefix(l, "a=ice-pwd:")
		case strings.HasPrefix(l, "a=mid:") && section == 0:
			f.mid = strings.TrimPrefix(l, "a=mid:")
		case strings.HasPrefix(l, "a=candidate:") && section <= 0:
			f.candidates = append(f.candidates, l)
		}
	}
	return f
}

// withICE is an offer with the credentials and candidates of a restart sdpfrag.
func withICE(offer string, f frag) string {
	var b strings.Builder
	section := -1
	for _, l := range strings.Split(offer, "\n") {
		l = strings.TrimRight(l, "\r")
		if l == "" {
			continue
		}
		switch {
		case strings.HasPrefix(l, "m="):
			section++
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			l = "a=ice-ufrag:" + f.ufrag
		case strings.HasPrefix(l, "a=ice-pwd:"):
			l = "a=ice-pwd:" + f.pwd
		case strings.HasPrefix(l, "a=candidate:") || l == "a=end-of-candidates":
			continue
		}
		b.WriteString(l + "\r\n")
		if strings.HasPrefix(l, "a=mid:") && section == 0 {
			for _, c := range f.candidates {
				b.WriteString(c + "\r\n")
			}
		}
	}
	return b.String()
}

func (s *server) route(w http.ResponseWriter, r *http.Request) {
	cors(w)
	if r.Method == http.MethodOptions {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.URL.Path == "/healthz" {
		s.mu.Lock()
		n := len(s.sessions)
		s.mu.Unlock()
		fmt.Fprintf(w, "ok sessions=%d created=%d closed=%d restarts=%d rtp_in=%d rtp_out=%d dc_messages=%d answer_us_total=%d\n",
			n, s.created.Load(), s.closed.Load(), s.restarts.Load(), s.rtpIn.Load(), s.rtpOut.Load(), s.dcMsgs.Load(), s.answerMs.Load())
		return
	}
	for _, c := range collections {
		if r.URL.Path == c {
			if r.Method != http.MethodPost {
				http.Error(w, "POST an SDP offer", http.StatusMethodNotAllowed)
				return
			}
			s.handleOffer(w, r, c)
			return
		}
		if id := strings.TrimPrefix(r.URL.Path, c+"/"); id != r.URL.Path && id != "" && !strings.Contains(id, "/") {
			s.handleSession(w, r, id)
			return
		}
	}
	http.NotFound(w, r)
}

func main() {
	httpAddr := flag.String("http", "127.0.0.1:0", "HTTP signaling address (port 0: a free one)")
	udpAddr := flag.String("udp", "127.0.0.1:0", "the one UDP address of every session, also the advertised candidate (port 0: a free one)")
	lite := flag.Bool("lite", true, "ICE-lite")
	role := flag.String("dtls-role", "server", "DTLS role in answers: server (a=setup:passive, as voiceedge) or client")
	interceptors := flag.Bool("interceptors", true, "Pion's default interceptors: RTCP reports, NACK, transport-cc feedback")
	token := flag.String("token", "", "require Authorization: Bearer TOKEN")
	flag.Parse()

	ua, err := net.ResolveUDPAddr("udp4", *udpAddr)
	if err != nil {
		log.Fatal(err)
	}
	udpConn, err := net.ListenUDP("udp4", ua)
	if err != nil {
		log.Fatal(err)
	}
	_ = udpConn.SetReadBuffer(4 << 20)
	_ = udpConn.SetWriteBuffer(4 << 20)
	mux := webrtc.NewICEUDPMux(nil, udpConn)

	se := webrtc.SettingEngine{}
	se.SetICEUDPMux(mux)
	se.SetLite(*lite)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	switch *role {
	case "server":
		err = se.SetAnsweringDTLSRole(webrtc.DTLSRoleServer)
	case "client":
		err = se.SetAnsweringDTLSRole(webrtc.DTLSRoleClient)
	default:
		err = fmt.Errorf("--dtls-role %q: want server or client", *role)
	}
	if err != nil {
		log.Fatal(err)
	}
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		log.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if *interceptors {
		if err := webrtc.RegisterDefaultInterceptors(m, ir); err != nil {
			log.Fatal(err)
		}
	}
	s := &server{
		api:      webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)),
		token:    *token,
		sessions: map[string]*session{},
	}
	ln, err := net.Listen("tcp4", *httpAddr)
	if err != nil {
		log.Fatal(err)
	}
	hello, _ := json.Marshal(map[string]interface{}{
		"http": ln.Addr().String(), "udp": udpConn.LocalAddr().String(), "pid": os.Getpid(), "lite": *lite, "dtls_role": *role,
	})
	fmt.Println(string(hello))
	srv := &http.Server{Handler: http.HandlerFunc(s.route), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	s.mu.Lock()
	for _, sess := range s.sessions {
		_ = sess.pc.Close()
	}
	s.mu.Unlock()
}
