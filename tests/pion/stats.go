package main

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/pion/rtp"
)

// histogram counts durations in fixed bins: 0.1 ms up to 100 ms, 1 ms up to
// 2 s, then one overflow bin. It merges across calls for the load summary
// and keeps its memory fixed however long a call lasts.
type histogram struct {
	bins  [histBins]uint32
	n     int64
	max   float64
	total float64
}

const (
	histFine   = 1000 // 0.1 ms bins below 100 ms
	histCoarse = 1900 // 1 ms bins from 100 ms to 2 s
	histBins   = histFine + histCoarse + 1
)

func (h *histogram) add(ms float64) {
	var i int
	switch {
	case ms < 0:
		ms, i = 0, 0
	case ms < 100:
		i = int(ms * 10)
	case ms < 2000:
		i = histFine + int(ms-100)
	default:
		i = histBins - 1
	}
	h.bins[i]++
	h.n++
	h.total += ms
	if ms > h.max {
		h.max = ms
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.bins {
		h.bins[i] += c
	}
	h.n += o.n
	h.total += o.total
	if o.max > h.max {
		h.max = o.max
	}
}

// binMid is the middle of bin i in milliseconds (the overflow bin reports the maximum).
func (h *histogram) binMid(i int) float64 {
	switch {
	case i < histFine:
		return (float64(i) + 0.5) / 10
	case i < histBins-1:
		return 100 + float64(i-histFine) + 0.5
	default:
		return h.max
	}
}

// pct is the p-th percentile (nearest rank), never above the largest value seen.
func (h *histogram) pct(p float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(p / 100 * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range h.bins {
		seen += int64(c)
		if seen >= rank {
			return math.Min(h.binMid(i), h.max)
		}
	}
	return h.max
}

func (h *histogram) mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.total / float64(h.n)
}

// gapProbe watches inbound audio around an event (an ICE restart, a new
// local port): the largest arrival gap among packets that arrive within its
// span, and when audio came back.
type gapProbe struct {
	start, until time.Time
	lastBefore   time.Time // the last packet before start (known once one arrives after it)
	firstAfter   time.Time
	maxGap       time.Duration
	packets      int64
}

// gapReport is a gapProbe as milliseconds since the call started.
type gapReport struct {
	LastRTPBeforeMs *float64 `json:"last_rtp_before_ms"`
	FirstRTPAfterMs *float64 `json:"first_rtp_after_ms"`
	AudioResumed    bool     `json:"audio_resumed"`
	AudioGapMs      *float64 `json:"audio_gap_ms"` // largest arrival gap; up to the end when audio never resumed
	PacketsAfter    int64    `json:"packets_after"`
}

// window counts packets and gaps while a load measurement window is open.
type window struct {
	packets int64
	gaps    histogram
}

// inbound keeps what the client measures on received audio. One reader
// goroutine calls onRTP; everything else reads under mu.
type inbound struct {
	mu          sync.Mutex
	t0          time.Time
	clock       float64
	codec       string
	first, last time.Time
	packets     int64
	bytes       int64
	gaps        histogram
	jitter      float64 // RFC 3550 A.8, in RTP timestamp units
	prevTransit float64
	haveTransit bool
	baseSeq     uint32
	maxSeq      uint32 // extended highest sequence number
	haveSeq     bool
	extIDs      []uint8 // header extension IDs on the first packet
	probes      []*gapProbe
	win         *window
}

func (in *inbound) onRTP(h *rtp.Header, n int, now time.Time) (first bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.first.IsZero() {
		in.first, first = now, true
		in.extIDs = h.GetExtensionIDs()
	} else {
		gap := now.Sub(in.last)
		ms := float64(gap.Microseconds()) / 1000
		in.gaps.add(ms)
		if in.win != nil {
			in.win.gaps.add(ms)
		}
	}
	for _, p := range in.probes {
		if now.Before(p.start) || now.After(p.until) {
			continue
		}
		if p.packets == 0 {
			p.lastBefore, p.firstAfter = in.last, now
		}
		if !in.last.IsZero() {
			if gap := now.Sub(in.last); gap > p.maxGap {
				p.maxGap = gap
			}
		}
		p.packets++
	}
	in.last = now
	in.packets++
	in.bytes += int64(n)
	if in.win != nil {
		in.win.packets++
	}
	transit := now.Sub(in.t0).Seconds()*in.clock - float64(h.Timestamp)
	if in.haveTransit {
		in.jitter += (math.Abs(transit-in.prevTransit) - in.jitter) / 16
	}
	in.prevTransit, in.haveTransit = transit, true
	seq := uint32(h.SequenceNumber)
	if !in.haveSeq {
		in.baseSeq, in.maxSeq, in.haveSeq = seq, seq, true
	} else if d := int16(h.SequenceNumber - uint16(in.maxSeq)); d > 0 {
		in.maxSeq += uint32(d)
	}
	return first
}

// addProbe starts watching the audio gap around an event happening now.
func (in *inbound) addProbe(now time.Time, span time.Duration) *gapProbe {
	p := &gapProbe{start: now, until: now.Add(span)}
	in.mu.Lock()
	in.probes = append(in.probes, p)
	in.mu.Unlock()
	return p
}

func (in *inbound) report(p *gapProbe, end time.Time) gapReport {
	in.mu.Lock()
	defer in.mu.Unlock()
	ms := func(t time.Time) *float64 {
		if t.IsZero() {
			return nil
		}
		v := round3(float64(t.Sub(in.t0).Microseconds()) / 1000)
		return &v
	}
	r := gapReport{PacketsAfter: p.packets}
	if p.packets > 0 {
		r.LastRTPBeforeMs, r.FirstRTPAfterMs, r.AudioResumed = ms(p.lastBefore), ms(p.firstAfter), true
		v := round3(float64(p.maxGap.Microseconds()) / 1000)
		r.AudioGapMs = &v
	} else {
		r.LastRTPBeforeMs = ms(in.last)
		if !in.last.IsZero() {
			v := round3(float64(end.Sub(in.last).Microseconds()) / 1000)
			r.AudioGapMs = &v
		}
	}
	return r
}

// openWindow starts counting packets and gaps for a load measurement window.
func (in *inbound) openWindow() {
	in.mu.Lock()
	in.win = &window{}
	in.mu.Unlock()
}

// closeWindow stops the window and returns what it counted.
func (in *inbound) closeWindow() *window {
	in.mu.Lock()
	defer in.mu.Unlock()
	w := in.win
	in.win = nil
	return w
}

func (in *inbound) lost() int64 {
	if !in.haveSeq {
		return 0
	}
	expected := int64(in.maxSeq-in.baseSeq) + 1
	if lost := expected - in.packets; lost > 0 {
		return lost
	}
	return 0
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// dist is the p50/p95/max of a set of values (setup milestones in the load summary).
type dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	Max float64 `json:"max"`
}

func mkDist(v []float64) dist {
	if len(v) == 0 {
		return dist{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	at := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		if i < 0 {
			i = 0
		}
		return s[i]
	}
	return dist{N: len(s), P50: round3(at(50)), P95: round3(at(95)), Max: round3(s[len(s)-1])}
}
