package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Media types of the signaling conventions (RFC 9725 WHIP, RFC 8840 sdpfrag).
const (
	typeSDP     = "application/sdp"
	typeSDPFrag = "application/trickle-ice-sdpfrag"
)

// httpExchange is what one signaling request got back.
type httpExchange struct {
	status      int
	location    string // absolute, resolved against the request URL
	etag        string
	contentType string
	body        string
	ms          float64 // round trip
}

// signaler sends the offer, the ICE-restart PATCH and the DELETE.
type signaler struct {
	o  *options
	hc *http.Client
}

func (s *signaler) do(ctx context.Context, method, target, contentType, body string, extra map[string]string) (*httpExchange, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Accept", contentType)
	}
	if s.o.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.o.token)
	}
	for _, h := range s.o.headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	t := time.Now()
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	ex := &httpExchange{
		status:      resp.StatusCode,
		etag:        resp.Header.Get("ETag"),
		contentType: resp.Header.Get("Content-Type"),
		body:        string(b),
		ms:          round3(float64(time.Since(t).Microseconds()) / 1000),
	}
	if loc := resp.Header.Get("Location"); loc != "" {
		if base, e := url.Parse(target); e == nil {
			if u, e := base.Parse(loc); e == nil {
				ex.location = u.String()
			}
		}
	}
	if err != nil {
		return ex, fmt.Errorf("%s %s: reading the body: %w", method, target, err)
	}
	return ex, nil
}

// brief is the start of a response body, for error messages.
func brief(body string) string {
	body = strings.TrimSpace(body)
	if len(body) > 200 {
		body = body[:200] + "..."
	}
	return body
}

// postOffer POSTs the offer; the answer must come back as SDP with 200 or 201.
func (s *signaler) postOffer(ctx context.Context, offer string) (*httpExchange, error) {
	ex, err := s.do(ctx, http.MethodPost, s.o.url, typeSDP, offer, nil)
	if err != nil {
		return ex, err
	}
	if ex.status != http.StatusCreated && ex.status != http.StatusOK {
		return ex, fmt.Errorf("POST offer: HTTP %d: %s", ex.status, brief(ex.body))
	}
	if !strings.HasPrefix(strings.TrimSpace(ex.body), "v=0") {
		return ex, fmt.Errorf("POST offer: HTTP %d but the body is not SDP: %s", ex.status, brief(ex.body))
	}
	return ex, nil
}

// patch sends an ICE restart to the session's Location: a full re-offer
// (application/sdp, as a browser's restartIce() makes) or a WHIP sdpfrag
// (RFC 9725 §4.3.2: If-Match: *, the wildcard).
func (s *signaler) patch(ctx context.Context, location, contentType, body string) (*httpExchange, error) {
	extra := map[string]string{}
	if contentType == typeSDPFrag {
		extra["If-Match"] = "*"
	}
	ex, err := s.do(ctx, http.MethodPatch, location, contentType, body, extra)
	if err != nil {
		return ex, err
	}
	if ex.status != http.StatusOK {
		return ex, fmt.Errorf("PATCH %s: HTTP %d: %s", contentType, ex.status, brief(ex.body))
	}
	return ex, nil
}

// hangUp DELETEs the session; a fresh context, as the call's may be cancelled.
func (s *signaler) hangUp(location string) (*httpExchange, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.o.httpTimeout)
	defer cancel()
	return s.do(ctx, http.MethodDelete, location, "", "", nil)
}

// sdpLines splits SDP or an sdpfrag into lines without their CR LF.
func sdpLines(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimRight(l, "\r"); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// iceFrag is the ICE part of an SDP: credentials and candidates of the first
// m= section (the one BUNDLE tags: max-bundle gathers only there).
type iceFrag struct {
	ufrag, pwd string
	options    string
	media      string // the first m= line
	mid        string
	candidates []string // "a=candidate:..." lines
}

// iceFragOf reads the ICE part of SDP or of an sdpfrag. Credentials may be
// at session or media level; candidates count from the first m= section only.
func iceFragOf(text string) (iceFrag, error) {
	var f iceFrag
	section := -1
	for _, l := range sdpLines(text) {
		switch {
		case strings.HasPrefix(l, "m="):
			section++
			if section == 0 {
				f.media = l
			}
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			if f.ufrag == "" {
				f.ufrag = strings.TrimPrefix(l, "a=ice-ufrag:")
			}
		case strings.HasPrefix(l, "a=ice-pwd:"):
			if f.pwd == "" {
				f.pwd = strings.TrimPrefix(l, "a=ice-pwd:")
			}
		case strings.HasPrefix(l, "a=ice-options:"):
			f.options = strings.TrimPrefix(l, "a=ice-options:")
		case strings.HasPrefix(l, "a=mid:") && section == 0:
			f.mid = strings.TrimPrefix(l, "a=mid:")
		case strings.HasPrefix(l, "a=candidate:") && section <= 0:
			f.candidates = append(f.candidates, l)
		}
	}
	if f.ufrag == "" || f.pwd == "" {
		return f, errors.New("no a=ice-ufrag and a=ice-pwd")
	}
	return f, nil
}

// sdpFragForRestart is the body of a WHIP ICE-restart PATCH made from the
// restart offer: the new credentials and the candidates of the first
// (offerer-tagged) m= section (RFC 8840 §4.4, RFC 9725 §4.3.2).
func sdpFragForRestart(offer string) (string, error) {
	f, err := iceFragOf(offer)
	if err != nil {
		return "", fmt.Errorf("restart offer: %w", err)
	}
	if f.media == "" || f.mid == "" {
		return "", errors.New("restart offer: no m= section with a=mid")
	}
	var b strings.Builder
	opts := "trickle ice2"
	if f.options != "" {
		opts = f.options
	}
	fmt.Fprintf(&b, "a=ice-options:%s\r\n", opts)
	fmt.Fprintf(&b, "%s\r\na=mid:%s\r\n", f.media, f.mid)
	fmt.Fprintf(&b, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", f.ufrag, f.pwd)
	for _, c := range f.candidates {
		fmt.Fprintf(&b, "%s\r\n", c)
	}
	b.WriteString("a=end-of-candidates\r\n")
	return b.String(), nil
}

// answerWithFrag is the previous remote answer with the ICE credentials (and,
// when the fragment has some, the candidates) of a WHIP sdpfrag answer: what
// the server's answer would be had it sent a full one. Candidates go to the
// first m= section; the others of the BUNDLE group lose theirs.
func answerWithFrag(previous, frag string) (string, error) {
	f, err := iceFragOf(frag)
	if err != nil {
		return "", fmt.Errorf("sdpfrag answer: %w", err)
	}
	var b strings.Builder
	section := -1
	for _, l := range sdpLines(previous) {
		switch {
		case strings.HasPrefix(l, "m="):
			section++
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			l = "a=ice-ufrag:" + f.ufrag
		case strings.HasPrefix(l, "a=ice-pwd:"):
			l = "a=ice-pwd:" + f.pwd
		case (strings.HasPrefix(l, "a=candidate:") || l == "a=end-of-candidates") && len(f.candidates) > 0:
			continue
		}
		b.WriteString(l + "\r\n")
		if strings.HasPrefix(l, "a=mid:") && section == 0 && len(f.candidates) > 0 {
			for _, c := range f.candidates {
				b.WriteString(c + "\r\n")
			}
			b.WriteString("a=end-of-candidates\r\n")
		}
	}
	return b.String(), nil
}
