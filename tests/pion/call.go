package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
	"github.com/pion/webrtc/v3/pkg/media"
)

const frameDur = 20 * time.Millisecond

// stateChange is one transition of ICE, DTLS, the PeerConnection or the data channel.
type stateChange struct {
	AtMs  float64 `json:"at_ms"`
	What  string  `json:"what"`
	State string  `json:"state"`
}

// ending says how a call ended. Reason "duration" means it lasted as long as
// asked; any other reason is the first sign of the far end going away
// (ice_failed, dtls_closed, peerconnection_failed, ...), at AtMs.
type ending struct {
	Reason string  `json:"reason"`
	AtMs   float64 `json:"at_ms"`
	Early  bool    `json:"early"`
}

// restartReport says how an ICE restart went.
type restartReport struct {
	Mode           string   `json:"mode"` // sdp or sdpfrag
	AtMs           float64  `json:"at_ms"`
	PatchStatus    int      `json:"patch_status"`
	PatchMs        *float64 `json:"patch_ms"` // PATCH round trip
	PatchType      string   `json:"patch_content_type,omitempty"`
	Error          string   `json:"error,omitempty"`
	OldUfrag       string   `json:"old_server_ufrag"`
	NewUfrag       string   `json:"new_server_ufrag"`
	ICEReconnected bool     `json:"ice_reconnected"`
	ReconnectedMs  *float64 `json:"ice_reconnected_ms"` // since the call started
	ReconnectAfter *float64 `json:"reconnect_after_ms"` // since the restart began
	gapReport
}

// rebindReport says how the call went on after the client moved to a new local port.
type rebindReport struct {
	AtMs    float64 `json:"at_ms"`
	OldPort int     `json:"old_port"`
	NewPort int     `json:"new_port"`
	Error   string  `json:"error,omitempty"`
	// Datagrams through the new port: STUN shows the server answering the
	// client's checks there, the rest whether media followed.
	Sent         int64 `json:"sent_from_new_port"`
	Received     int64 `json:"received_on_new_port"`
	SentSTUN     int64 `json:"stun_sent_from_new_port"`
	ReceivedSTUN int64 `json:"stun_received_on_new_port"`
	gapReport
}

// Result is what `call` prints (and what `load` keeps per call). Times are
// milliseconds since the call started, before the PeerConnection was made;
// null when never reached.
type Result struct {
	OK                 bool               `json:"ok"`
	Error              string             `json:"error"`
	URL                string             `json:"url"`
	HTTPStatus         int                `json:"http_status"`
	Location           string             `json:"location"`
	ETag               string             `json:"etag,omitempty"`
	OfferReadyMs       *float64           `json:"offer_ready_ms"`
	HTTPAnswerMs       *float64           `json:"http_answer_ms"`
	ICEConnectedMs     *float64           `json:"ice_connected_ms"`
	DTLSConnectedMs    *float64           `json:"dtls_connected_ms"`
	PCConnectedMs      *float64           `json:"pc_connected_ms"`
	DataChannelOpenMs  *float64           `json:"datachannel_open_ms"`
	FirstInboundRTPMs  *float64           `json:"first_inbound_rtp_ms"`
	FirstDCMessageMs   *float64           `json:"first_dc_message_ms"`
	LastInboundRTPMs   *float64           `json:"last_inbound_rtp_ms"`
	DurationMs         float64            `json:"duration_ms"`
	SentPackets        int64              `json:"sent_packets"`
	SendLateMaxMs      float64            `json:"send_late_max_ms"` // worst lateness of our 20 ms sender
	InCodec            string             `json:"in_codec"`
	InPackets          int64              `json:"in_packets"`
	InBytes            int64              `json:"in_bytes"`
	InPPS              float64            `json:"in_pps"` // first inbound packet to the end of the call
	InLost             int64              `json:"in_lost"`
	JitterMs           float64            `json:"jitter_ms"`
	GapP50Ms           float64            `json:"gap_p50_ms"`
	GapP99Ms           float64            `json:"gap_p99_ms"`
	GapMaxMs           float64            `json:"gap_max_ms"`
	InHeaderExtensions []string           `json:"in_header_extensions"` // URIs on the first inbound packet
	DCLabel            string             `json:"dc_label"`
	DCSent             int64              `json:"dc_sent"`
	DCRecv             int64              `json:"dc_recv"`
	DCTypes            map[string]int     `json:"dc_types"`            // received messages by JSON "type"
	DCFirstMsByType    map[string]float64 `json:"dc_first_ms_by_type"` // when the first of each type arrived
	DCMessages         []string           `json:"dc_messages"`         // the first --keep-messages, verbatim
	Ended              ending             `json:"ended"`
	States             []stateChange      `json:"states"`
	Restart            *restartReport     `json:"restart,omitempty"`
	Rebind             *rebindReport      `json:"rebind,omitempty"`
	DeleteStatus       int                `json:"delete_status"` // 0: not sent (no Location); -1: no answer
	DeleteMs           *float64           `json:"delete_ms"`
	PionProblems       []loggedProblem    `json:"pion_problems"` // Pion's warnings and errors (call mode)
	OfferSDP           string             `json:"offer_sdp,omitempty"`
	AnswerSDP          string             `json:"answer_sdp,omitempty"`
}

// callPlan is what one call is asked to do.
type callPlan struct {
	seconds     float64 // 0: until the context ends (load)
	restartAt   float64
	restartMode string
	rebindAt    float64
	rebinder    *rebindableConn
}

// call is one WebRTC call and everything measured on it.
type call struct {
	o      *options
	api    *webrtc.API
	sig    *signaler
	frames [][]byte
	t0     time.Time

	mu      sync.Mutex
	marks   map[string]float64
	states  []stateChange
	err     error
	end     *ending
	restart *restartReport

	closing atomic.Bool   // we are hanging up: later state changes are ours
	up      chan struct{} // closed on the first inbound RTP packet
	failed  chan struct{} // closed when the far end went away
	done    chan struct{} // closed when the call is over
	once    struct{ up, failed sync.Once }

	in        inbound
	sent      atomic.Int64
	lateMaxUs atomic.Int64

	dcSent, dcRecv atomic.Int64
	dcTypes        map[string]int
	dcFirstByType  map[string]float64
	dcMessages     []string
	extURIs        map[int]string
	onHangUp       func() // called once we start hanging up
}

func newCall(o *options, api *webrtc.API, sig *signaler) *call {
	c := &call{o: o, api: api, sig: sig, frames: audioSources[o.audio], t0: time.Now(),
		marks: map[string]float64{}, up: make(chan struct{}), failed: make(chan struct{}), done: make(chan struct{}),
		dcTypes: map[string]int{}, dcFirstByType: map[string]float64{}}
	c.in.t0 = c.t0
	c.in.clock = 48000
	return c
}

func (c *call) since(t time.Time) float64 { return round3(float64(t.Sub(c.t0).Microseconds()) / 1000) }
func (c *call) ms() float64               { return c.since(time.Now()) }

func (c *call) mark(name string) {
	t := c.ms()
	c.mu.Lock()
	if _, ok := c.marks[name]; !ok {
		c.marks[name] = t
	}
	c.mu.Unlock()
}

func (c *call) markPtr(name string) *float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.marks[name]; ok {
		return &v
	}
	return nil
}

// setErr keeps the first error of the call.
func (c *call) setErr(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// state records a transition; a terminal one ends the call unless we are hanging up.
func (c *call) state(what, state string, terminal bool) {
	at := c.ms()
	c.mu.Lock()
	c.states = append(c.states, stateChange{AtMs: at, What: what, State: state})
	ours := c.closing.Load()
	if terminal && !ours && c.end == nil {
		c.end = &ending{Reason: what + "_" + state, AtMs: at, Early: true}
	}
	if what == "ice" && state == "connected" && c.restart != nil && c.restart.ReconnectedMs == nil {
		c.restart.ICEReconnected = true
		v := at
		after := round3(at - c.restart.AtMs)
		c.restart.ReconnectedMs, c.restart.ReconnectAfter = &v, &after
	}
	c.mu.Unlock()
	if terminal && !ours {
		c.once.failed.Do(func() { close(c.failed) })
	}
}

func (c *call) isUp() bool {
	select {
	case <-c.up:
		return true
	default:
		return false
	}
}

// ended reports whether the far end went away (a terminal state).
func (c *call) ended() bool {
	select {
	case <-c.failed:
		return true
	default:
		return false
	}
}

func (c *call) readTrack(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	c.in.mu.Lock()
	c.in.codec = tr.Codec().MimeType
	if rate := tr.Codec().ClockRate; rate != 0 {
		c.in.clock = float64(rate)
	}
	c.in.mu.Unlock()
	uris := map[int]string{}
	for _, e := range recv.GetParameters().HeaderExtensions {
		uris[e.ID] = e.URI
	}
	c.mu.Lock()
	c.extURIs = uris
	c.mu.Unlock()
	buf := make([]byte, 1500)
	var h rtp.Header
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if _, err := h.Unmarshal(buf[:n]); err != nil {
			continue
		}
		if c.in.onRTP(&h, n, now) {
			c.mark("first_inbound_rtp")
			c.once.up.Do(func() { close(c.up) })
		}
	}
}

// sendAudio sends one real Opus frame every 20 ms, on schedule, until the call is over.
func (c *call) sendAudio(track *webrtc.TrackLocalStaticSample) {
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := 0; ; i++ {
		select {
		case <-c.done:
			return
		case <-timer.C:
		}
		if late := time.Since(next).Microseconds(); late > c.lateMaxUs.Load() {
			c.lateMaxUs.Store(late)
		}
		if err := track.WriteSample(media.Sample{Data: c.frames[i%len(c.frames)], Duration: frameDur}); err == nil {
			c.sent.Add(1)
		}
		next = next.Add(frameDur)
		timer.Reset(time.Until(next))
	}
}

func (c *call) onMessage(m webrtc.DataChannelMessage) {
	at := c.ms()
	c.mark("first_dc_message")
	c.dcRecv.Add(1)
	kind := "(binary)"
	if m.IsString {
		var v struct {
			Type *string `json:"type"`
		}
		switch {
		case json.Unmarshal(m.Data, &v) != nil:
			kind = "(not json)"
		case v.Type == nil:
			kind = "(no type)"
		default:
			kind = *v.Type
		}
	}
	c.mu.Lock()
	c.dcTypes[kind]++
	if _, ok := c.dcFirstByType[kind]; !ok {
		c.dcFirstByType[kind] = at
	}
	if len(c.dcMessages) < c.o.keepMessages {
		text := string(m.Data)
		if len(text) > 4096 {
			text = text[:4096]
		}
		c.dcMessages = append(c.dcMessages, text)
	}
	c.mu.Unlock()
}

// run makes the call and fills res. With plan.seconds zero the call lasts until ctx ends.
func (c *call) run(ctx context.Context, plan callPlan) (res Result) {
	o := c.o
	res.URL = o.url
	res.DCLabel = o.dcLabel
	var location string
	defer func() { c.fill(&res) }()

	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		c.setErr(fmt.Errorf("new PeerConnection: %w", err))
		return
	}
	defer func() {
		c.closing.Store(true)
		if c.onHangUp != nil {
			c.onHangUp()
		}
		close(c.done)
		res.DurationMs = c.ms()
		if location != "" {
			if ex, err := c.sig.hangUp(location); err != nil {
				res.DeleteStatus = -1
			} else {
				res.DeleteStatus, res.DeleteMs = ex.status, &ex.ms
			}
		}
		_ = pc.Close()
	}()

	track, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pionpeer")
	if err != nil {
		c.setErr(err)
		return
	}
	tc, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendrecv})
	if err != nil {
		c.setErr(err)
		return
	}
	sender := tc.Sender()
	go func() { // read RTCP so that the interceptors see it
		buf := make([]byte, 1500)
		for {
			if _, _, err := sender.Read(buf); err != nil {
				return
			}
		}
	}()
	if dt := sender.Transport(); dt != nil {
		dt.OnStateChange(func(st webrtc.DTLSTransportState) {
			if st == webrtc.DTLSTransportStateConnected {
				c.mark("dtls_connected")
			}
			c.state("dtls", st.String(), st == webrtc.DTLSTransportStateFailed || st == webrtc.DTLSTransportStateClosed)
		})
		dt.ICETransport().OnSelectedCandidatePairChange(func(p *webrtc.ICECandidatePair) {
			c.state("ice_pair", p.String(), false)
		})
	}
	pc.OnICEConnectionStateChange(func(st webrtc.ICEConnectionState) {
		if st == webrtc.ICEConnectionStateConnected {
			c.mark("ice_connected")
		}
		c.state("ice", st.String(), st == webrtc.ICEConnectionStateFailed || st == webrtc.ICEConnectionStateClosed)
	})
	var startAudio sync.Once
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateConnected {
			c.mark("pc_connected")
			startAudio.Do(func() { go c.sendAudio(track) })
		}
		c.state("peerconnection", st.String(), st == webrtc.PeerConnectionStateFailed || st == webrtc.PeerConnectionStateClosed)
	})
	pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		c.mark("ontrack")
		if tr.Kind() == webrtc.RTPCodecTypeAudio {
			c.readTrack(tr, recv)
		}
	})
	if o.dcLabel != "" {
		dc, err := pc.CreateDataChannel(o.dcLabel, nil)
		if err != nil {
			c.setErr(err)
			return
		}
		dc.OnOpen(func() {
			c.mark("datachannel_open")
			c.state("datachannel", "open", false)
			for _, e := range o.events {
				if err := dc.SendText(e); err != nil {
					c.setErr(fmt.Errorf("data channel send: %w", err))
					return
				}
				c.dcSent.Add(1)
			}
		})
		dc.OnClose(func() { c.state("datachannel", "closed", false) })
		dc.OnMessage(c.onMessage)
	}

	offer, err := pc.CreateOffer(nil)
	if err != nil {
		c.setErr(err)
		return
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err = pc.SetLocalDescription(offer); err != nil {
		c.setErr(err)
		return
	}
	if !c.waitGathered(ctx, gathered) {
		return
	}
	c.mark("offer_ready")
	local := pc.LocalDescription().SDP
	if o.withSDP {
		res.OfferSDP = local
	}
	if !strings.Contains(local, "a=candidate:") {
		c.setErr(fmt.Errorf("no local candidate gathered on --host-ip %s", o.hostIP))
		return
	}

	ex, err := c.sig.postOffer(ctx, local)
	c.mark("http_answer")
	if ex != nil {
		res.HTTPStatus, res.ETag = ex.status, ex.etag
		location, res.Location = ex.location, ex.location
	}
	if err != nil {
		c.setErr(err)
		return
	}
	if o.withSDP {
		res.AnswerSDP = ex.body
	}
	if location == "" {
		c.setErr(fmt.Errorf("POST offer: HTTP %d without a Location", ex.status))
	}
	if err = pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: ex.body}); err != nil {
		c.setErr(fmt.Errorf("set the answer: %w", err))
		return
	}

	var until time.Time
	if plan.seconds > 0 {
		until = c.t0.Add(time.Duration(plan.seconds * float64(time.Second)))
	}
	setupEnd := c.t0.Add(o.setupTimeout)
	if !until.IsZero() && until.Before(setupEnd) {
		setupEnd = until
	}
	setup := time.NewTimer(time.Until(setupEnd))
	defer setup.Stop()
	select {
	case <-c.up:
	case <-c.failed:
		return
	case <-ctx.Done():
		c.setErr(errors.New("interrupted before the first inbound RTP packet"))
		return
	case <-setup.C:
		c.setErr(fmt.Errorf("no inbound RTP within %v of the start", setupEnd.Sub(c.t0).Round(time.Millisecond)))
		return
	}

	var end, restartAt, rebindAt <-chan time.Time
	timer := func(s float64) <-chan time.Time {
		t := time.NewTimer(time.Until(c.t0.Add(time.Duration(s * float64(time.Second)))))
		go func() { <-c.done; t.Stop() }()
		return t.C
	}
	if !until.IsZero() {
		end = timer(plan.seconds)
	}
	if plan.restartAt > 0 {
		restartAt = timer(plan.restartAt)
	}
	if plan.rebindAt > 0 && plan.rebinder != nil {
		rebindAt = timer(plan.rebindAt)
	}
	var restartProbe, rebindProbe *gapProbe
	var rebind *rebindReport
	for loop := true; loop; {
		select {
		case <-end:
			loop = false
		case <-ctx.Done():
			if !until.IsZero() {
				c.setErr(errors.New("interrupted"))
			}
			loop = false
		case <-c.failed:
			loop = false
		case <-restartAt:
			restartAt = nil
			restartProbe = c.restartICE(ctx, pc, location, plan.restartMode, ex.body)
		case <-rebindAt:
			rebindAt = nil
			rebind = &rebindReport{AtMs: c.ms()}
			rebindProbe = c.in.addProbe(time.Now(), 10*time.Second)
			old, port, err := plan.rebinder.rebind()
			rebind.OldPort, rebind.NewPort = old, port
			if err != nil {
				rebind.Error = err.Error()
			}
			c.state("local_port", fmt.Sprint(port), false)
		}
	}
	now := time.Now()
	if restartProbe != nil {
		c.mu.Lock()
		res.Restart = c.restart
		c.mu.Unlock()
		res.Restart.gapReport = c.in.report(restartProbe, now)
	}
	if rebind != nil {
		rb := plan.rebinder
		rebind.Sent, rebind.Received = rb.sent.Load(), rb.received.Load()
		rebind.SentSTUN, rebind.ReceivedSTUN = rb.sentSTUN.Load(), rb.receivedSTUN.Load()
		rebind.gapReport = c.in.report(rebindProbe, now)
		res.Rebind = rebind
	}
	if o.dcLabel != "" && c.markPtr("datachannel_open") == nil {
		c.setErr(fmt.Errorf("data channel %q did not open", o.dcLabel))
	}
	return
}

func (c *call) waitGathered(ctx context.Context, gathered <-chan struct{}) bool {
	t := time.NewTimer(c.o.setupTimeout)
	defer t.Stop()
	select {
	case <-gathered:
		return true
	case <-ctx.Done():
		c.setErr(errors.New("interrupted during ICE gathering"))
	case <-t.C:
		c.setErr(errors.New("ICE gathering did not complete"))
	}
	return false
}

// restartICE makes an ICE-restart offer and PATCHes it to the session, as a
// full SDP offer or as a WHIP sdpfrag, then applies the answer. It returns
// the probe that measures the audio gap across the restart.
func (c *call) restartICE(ctx context.Context, pc *webrtc.PeerConnection, location, mode, firstAnswer string) *gapProbe {
	r := &restartReport{Mode: mode, AtMs: c.ms()}
	if f, err := iceFragOf(pc.RemoteDescription().SDP); err == nil {
		r.OldUfrag = f.ufrag
	}
	c.mu.Lock()
	c.restart = r
	c.mu.Unlock()
	probe := c.in.addProbe(time.Now(), 15*time.Second)
	fail := func(err error) *gapProbe {
		c.mu.Lock()
		r.Error = err.Error()
		c.mu.Unlock()
		c.setErr(fmt.Errorf("ICE restart: %w", err))
		return probe
	}
	c.state("ice_restart", mode, false)
	offer, err := pc.CreateOffer(&webrtc.OfferOptions{ICERestart: true})
	if err != nil {
		return fail(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err = pc.SetLocalDescription(offer); err != nil {
		return fail(err)
	}
	if !c.waitGathered(ctx, gathered) {
		return probe
	}
	local := pc.LocalDescription().SDP
	contentType, body := typeSDP, local
	if mode == "sdpfrag" {
		contentType = typeSDPFrag
		if body, err = sdpFragForRestart(local); err != nil {
			return fail(err)
		}
	}
	ex, err := c.sig.patch(ctx, location, contentType, body)
	if ex != nil {
		c.mu.Lock()
		r.PatchStatus, r.PatchMs, r.PatchType = ex.status, &ex.ms, ex.contentType
		c.mu.Unlock()
	}
	if err != nil {
		return fail(err)
	}
	answer := ex.body
	if mode == "sdpfrag" {
		previous := firstAnswer
		if rd := pc.RemoteDescription(); rd != nil {
			previous = rd.SDP
		}
		if answer, err = answerWithFrag(previous, ex.body); err != nil {
			return fail(err)
		}
	}
	if f, err := iceFragOf(answer); err == nil {
		c.mu.Lock()
		r.NewUfrag = f.ufrag
		c.mu.Unlock()
	}
	if err = pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return fail(fmt.Errorf("set the restart answer: %w", err))
	}
	return probe
}

// fill copies what was measured into res and decides ok and error.
func (c *call) fill(res *Result) {
	res.OfferReadyMs = c.markPtr("offer_ready")
	res.HTTPAnswerMs = c.markPtr("http_answer")
	res.ICEConnectedMs = c.markPtr("ice_connected")
	res.DTLSConnectedMs = c.markPtr("dtls_connected")
	res.PCConnectedMs = c.markPtr("pc_connected")
	res.DataChannelOpenMs = c.markPtr("datachannel_open")
	res.FirstInboundRTPMs = c.markPtr("first_inbound_rtp")
	res.FirstDCMessageMs = c.markPtr("first_dc_message")
	if res.DurationMs == 0 {
		res.DurationMs = c.ms()
	}
	res.SentPackets = c.sent.Load()
	res.SendLateMaxMs = round3(float64(c.lateMaxUs.Load()) / 1000)
	res.DCSent, res.DCRecv = c.dcSent.Load(), c.dcRecv.Load()

	in := &c.in
	in.mu.Lock()
	res.InCodec = in.codec
	res.InPackets, res.InBytes = in.packets, in.bytes
	if !in.first.IsZero() {
		last := c.since(in.last)
		res.LastInboundRTPMs = &last
		end := c.t0.Add(time.Duration(res.DurationMs * float64(time.Millisecond)))
		if d := end.Sub(in.first).Seconds(); d > 0 {
			res.InPPS = round3(float64(in.packets) / d)
		}
		res.JitterMs = round3(in.jitter / in.clock * 1000)
		res.InLost = in.lost()
		res.GapP50Ms, res.GapP99Ms, res.GapMaxMs = round3(in.gaps.pct(50)), round3(in.gaps.pct(99)), round3(in.gaps.max)
	}
	ids := in.extIDs
	in.mu.Unlock()

	c.mu.Lock()
	res.InHeaderExtensions = []string{}
	for _, id := range ids {
		uri, ok := c.extURIs[int(id)]
		if !ok {
			uri = fmt.Sprintf("id %d (not negotiated)", id)
		}
		res.InHeaderExtensions = append(res.InHeaderExtensions, uri)
	}
	res.DCTypes, res.DCFirstMsByType = c.dcTypes, c.dcFirstByType
	res.DCMessages = append([]string{}, c.dcMessages...)
	res.States = append([]stateChange{}, c.states...)
	switch {
	case c.end != nil:
		res.Ended = *c.end
	case c.lastState("ice") == "disconnected":
		// The far end stopped answering and Pion has not yet declared failure.
		at := c.lastStateAt("ice")
		res.Ended = ending{Reason: "ice_disconnected", AtMs: at, Early: true}
	default:
		res.Ended = ending{Reason: "duration", AtMs: res.DurationMs}
	}
	err := c.err
	c.mu.Unlock()

	switch {
	case err != nil:
		res.Error = err.Error()
	case res.Ended.Early:
		res.Error = fmt.Sprintf("call ended early: %s at %.0f ms", res.Ended.Reason, res.Ended.AtMs)
	case res.FirstInboundRTPMs == nil:
		res.Error = "no inbound RTP"
	case res.Restart != nil && !res.Restart.ICEReconnected:
		res.Error = "ICE did not reconnect after the restart"
	case res.Restart != nil && !res.Restart.AudioResumed:
		res.Error = "audio did not resume after the ICE restart"
	case res.Rebind != nil && !res.Rebind.AudioResumed:
		res.Error = "audio did not resume after the local port changed"
	}
	res.OK = res.Error == ""
}

// lastState is the latest state of one kind; c.mu held.
func (c *call) lastState(what string) string {
	for i := len(c.states) - 1; i >= 0; i-- {
		if c.states[i].What == what {
			return c.states[i].State
		}
	}
	return ""
}

func (c *call) lastStateAt(what string) float64 {
	for i := len(c.states) - 1; i >= 0; i-- {
		if c.states[i].What == what {
			return c.states[i].AtMs
		}
	}
	return 0
}

func cmdCall(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	var o options
	addCommonFlags(fs, &o)
	seconds := fs.Float64("seconds", 5, "call duration in seconds from the start, setup included")
	restartAt := fs.Float64("restart-at", 0, "make an ICE restart this many seconds into the call (0: none)")
	restartMode := fs.String("restart-mode", "sdp", "how the restart is PATCHed: sdp (a full re-offer, as restartIce()) or sdpfrag (WHIP, RFC 9725)")
	rebindAt := fs.Float64("rebind-at", 0, "move the client to a new local UDP port this many seconds into the call, as a NAT rebinding does (0: never)")
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	if err := o.check(); err != nil {
		return usageError(err)
	}
	if *seconds <= 0 {
		return usageError(errors.New("--seconds must be positive"))
	}
	if *restartMode != "sdp" && *restartMode != "sdpfrag" {
		return usageError(fmt.Errorf("--restart-mode %q: want sdp or sdpfrag", *restartMode))
	}
	if *restartAt >= *seconds || *rebindAt >= *seconds {
		return usageError(errors.New("--restart-at and --rebind-at must fall within --seconds"))
	}
	stopProfile, err := o.startProfile()
	if err != nil {
		return usageError(err)
	}
	defer stopProfile()
	plan := callPlan{seconds: *seconds, restartAt: *restartAt, restartMode: *restartMode, rebindAt: *rebindAt}
	logs := newLogSink()
	var mux interface{ Close() error }
	if *rebindAt > 0 {
		conn, err := listenRebindable(net.ParseIP(o.hostIP))
		if err != nil {
			return usageError(err)
		}
		plan.rebinder = conn
		m := webrtc.NewICEUDPMux(nil, conn)
		mux = m
		defer mux.Close()
		api, err := newAPI(&o, logs, m)
		if err != nil {
			return usageError(err)
		}
		return finishCall(ctx, &o, api, logs, plan)
	}
	api, err := newAPI(&o, logs, nil)
	if err != nil {
		return usageError(err)
	}
	return finishCall(ctx, &o, api, logs, plan)
}

func finishCall(ctx context.Context, o *options, api *webrtc.API, logs *logSink, plan callPlan) int {
	c := newCall(o, api, &signaler{o: o, hc: newHTTPClient(o.httpTimeout)})
	c.onHangUp = logs.freeze
	res := c.run(ctx, plan)
	res.PionProblems = logs.problems()
	printJSON(res)
	if !res.OK {
		return 1
	}
	return 0
}
