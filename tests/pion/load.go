package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// pidList is --server-pid, repeatable or comma-separated.
type pidList []int

func (l *pidList) String() string { return fmt.Sprint(*l) }
func (l *pidList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || pid <= 0 {
			return fmt.Errorf("bad PID %q", s)
		}
		*l = append(*l, pid)
	}
	return nil
}

type ppsStats struct {
	Mean float64 `json:"mean"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
}

type gapStats struct {
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// serverStats is what the server's processes spent during the window.
type serverStats struct {
	PIDs          []int   `json:"pids"`
	CPUMs         float64 `json:"cpu_ms"`
	CPUPct        float64 `json:"cpu_pct"`           // of one core
	CPUMsPerCallS float64 `json:"cpu_ms_per_call_s"` // CPU-ms per second of one call
	RSSKBIdle     int64   `json:"rss_kb_idle"`       // before the first call
	RSSKBEnd      int64   `json:"rss_kb_end"`        // at the end of the window
	RSSKBPerCall  float64 `json:"rss_kb_per_call"`
	Threads       int64   `json:"threads"`
}

type clientStats struct {
	LoadAvgStart  float64 `json:"loadavg_1m_start"` // the machine's, from /proc/loadavg: figures from a busy machine mislead
	LoadAvgEnd    float64 `json:"loadavg_1m_end"`
	CPUPct        float64 `json:"cpu_pct"` // this process, of one core, during the window
	Goroutines    int     `json:"goroutines"`
	GOMAXPROCS    int     `json:"gomaxprocs"`
	SendLateMaxMs float64 `json:"send_late_max_ms"` // worst lateness of any call's 20 ms sender
}

type loadSummary struct {
	Mode          string          `json:"mode"`
	OK            bool            `json:"ok"` // every call reached audio and lasted to the end
	URL           string          `json:"url"`
	N             int             `json:"n"`
	Ramp          float64         `json:"ramp_per_s"`
	Started       int             `json:"started"`
	UpAtWindow    int             `json:"up_at_window"` // receiving audio when the window opened
	OKCalls       int             `json:"ok_calls"`
	Failed        int             `json:"failed"`
	Errors        map[string]int  `json:"errors"`
	EndedEarly    int             `json:"ended_early"`
	EndReasons    map[string]int  `json:"end_reasons"`
	EndedEarlyAt  dist            `json:"ended_early_at_ms"`
	SetupWaitS    float64         `json:"setup_wait_s"` // load start to window start
	WindowS       float64         `json:"window_s"`
	Setup         map[string]dist `json:"setup_ms"`
	InPPSPerCall  ppsStats        `json:"in_pps_per_call"` // over the calls up at the window
	CallsGE48PPS  int             `json:"calls_ge_48pps"`
	InPPSTotal    float64         `json:"in_pps_total"`
	SentPPSTotal  float64         `json:"sent_pps_total"`
	Gap           gapStats        `json:"gap_ms"` // every arrival gap of every call in the window
	GapP99Worst   float64         `json:"gap_p99_ms_worst_call"`
	InLostTotal   int64           `json:"in_lost_total"`
	JitterMsMean  float64         `json:"jitter_ms_mean"`
	JitterMsMax   float64         `json:"jitter_ms_max"`
	DCOpen        int             `json:"dc_open"`
	DCWithMessage int             `json:"dc_with_message"`
	DeleteStatus  map[string]int  `json:"delete_status"`
	Server        *serverStats    `json:"server,omitempty"`
	Client        clientStats     `json:"client"`
	PionProblems  []loggedProblem `json:"pion_problems"`
	Calls         []Result        `json:"calls,omitempty"`
}

func cmdLoad(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var o options
	addCommonFlags(fs, &o)
	n := fs.Int("n", 10, "number of calls")
	ramp := fs.Float64("ramp", 10, "calls started per second")
	seconds := fs.Float64("seconds", 20, "measurement window in seconds, once every call is up (or given up on)")
	settle := fs.Float64("settle", 2, "seconds between the last call coming up and the window")
	var pids pidList
	fs.Var(&pids, "server-pid", "a server process to measure (repeatable, or comma-separated): CPU and RSS summed")
	children := fs.Bool("server-children", false, "also measure every descendant of --server-pid (worker processes)")
	perCall := fs.Bool("per-call", false, "include every call's result")
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	if err := o.check(); err != nil {
		return usageError(err)
	}
	if *n < 1 || *ramp <= 0 || *seconds <= 0 || *settle < 0 {
		return usageError(errors.New("need --n >= 1, --ramp > 0, --seconds > 0, --settle >= 0"))
	}
	stopProfile, err := o.startProfile()
	if err != nil {
		return usageError(err)
	}
	defer stopProfile()
	logs := newLogSink()
	api, err := newAPI(&o, logs, nil)
	if err != nil {
		return usageError(err)
	}
	sig := &signaler{o: &o, hc: newHTTPClient(o.httpTimeout)}
	sum := loadSummary{Mode: "load", URL: o.url, N: *n, Ramp: *ramp, Setup: map[string]dist{},
		Errors: map[string]int{}, EndReasons: map[string]int{}, DeleteStatus: map[string]int{}}
	loadStart := loadAvg()
	var idle serverSnapshot
	if len(pids) > 0 {
		idle = snapshotServer(pids, *children)
	}

	callCtx, hangUp := context.WithCancel(ctx)
	defer hangUp()
	calls := make([]*call, *n)
	results := make([]Result, *n)
	finished := make([]chan struct{}, *n)
	for i := range finished {
		finished[i] = make(chan struct{})
	}
	var mu sync.Mutex
	start := time.Now()
	go func() {
		for i := 0; i < *n; i++ {
			at := start.Add(time.Duration(float64(i) / *ramp * float64(time.Second)))
			t := time.NewTimer(time.Until(at))
			select {
			case <-t.C:
			case <-callCtx.Done():
				t.Stop()
				for j := i; j < *n; j++ {
					mu.Lock()
					results[j] = Result{Error: "not started", URL: o.url}
					mu.Unlock()
					close(finished[j])
				}
				return
			}
			c := newCall(&o, api, sig)
			mu.Lock()
			calls[i] = c
			mu.Unlock()
			go func(i int, c *call) {
				r := c.run(callCtx, callPlan{})
				mu.Lock()
				results[i] = r
				mu.Unlock()
				close(finished[i])
			}(i, c)
		}
	}()
	isDone := func(i int) bool {
		select {
		case <-finished[i]:
			return true
		default:
			return false
		}
	}
	get := func(i int) *call {
		mu.Lock()
		defer mu.Unlock()
		return calls[i]
	}

	// Wait until every call receives audio, has ended, or is given up on.
	deadline := start.Add(time.Duration(float64(*n) / *ramp * float64(time.Second))).Add(o.setupTimeout + time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		pending := 0
		for i := 0; i < *n; i++ {
			if c := get(i); !isDone(i) && (c == nil || (!c.isUp() && !c.ended())) {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	sleepCtx(ctx, time.Duration(*settle*float64(time.Second)))

	// The measurement window.
	var open []int
	for i := 0; i < *n; i++ {
		if c := get(i); c != nil && !isDone(i) && c.isUp() && !c.ended() {
			c.in.openWindow()
			open = append(open, i)
		}
	}
	sentA := map[int]int64{}
	for _, i := range open {
		sentA[i] = get(i).sent.Load()
	}
	selfA, _, _ := procStat(0)
	var srvA serverSnapshot
	if len(pids) > 0 {
		srvA = snapshotServer(pids, *children)
	}
	tA := time.Now()
	sum.SetupWaitS = round3(tA.Sub(start).Seconds())
	sum.UpAtWindow = len(open)
	sleepCtx(ctx, time.Duration(*seconds*float64(time.Second)))
	tB := time.Now()
	selfB, _, _ := procStat(0)
	var srvB serverSnapshot
	if len(pids) > 0 {
		srvB = snapshotServer(pids, *children)
	}
	win := tB.Sub(tA).Seconds()
	sum.WindowS = round3(win)
	sum.Client = clientStats{LoadAvgStart: loadStart, LoadAvgEnd: loadAvg(), CPUPct: round3((selfB - selfA) / win / 10),
		Goroutines: runtime.NumGoroutine(), GOMAXPROCS: runtime.GOMAXPROCS(0)}

	var pps []float64
	var gaps histogram
	var inTotal, sentTotal int64
	for _, i := range open {
		c := get(i)
		w := c.in.closeWindow()
		if w == nil {
			continue
		}
		v := float64(w.packets) / win
		pps = append(pps, v)
		if v >= 48 {
			sum.CallsGE48PPS++
		}
		inTotal += w.packets
		sentTotal += c.sent.Load() - sentA[i]
		gaps.merge(&w.gaps)
		sum.GapP99Worst = math.Max(sum.GapP99Worst, round3(w.gaps.pct(99)))
	}
	if len(pps) > 0 {
		mn, mx, tot := math.Inf(1), 0.0, 0.0
		for _, v := range pps {
			tot += v
			mn, mx = math.Min(mn, v), math.Max(mx, v)
		}
		sum.InPPSPerCall = ppsStats{Mean: round3(tot / float64(len(pps))), Min: round3(mn), Max: round3(mx)}
	}
	sum.InPPSTotal = round3(float64(inTotal) / win)
	sum.SentPPSTotal = round3(float64(sentTotal) / win)
	sum.Gap = gapStats{P50: round3(gaps.pct(50)), P99: round3(gaps.pct(99)), P999: round3(gaps.pct(99.9)), Max: round3(gaps.max)}
	if len(pids) > 0 {
		srv := &serverStats{PIDs: srvB.pids, CPUMs: round3(srvB.cpuSince(srvA)), RSSKBIdle: idle.rssKB, RSSKBEnd: srvB.rssKB, Threads: srvB.threads}
		srv.CPUPct = round3(srv.CPUMs / win / 10)
		if sum.UpAtWindow > 0 {
			srv.CPUMsPerCallS = round3(srv.CPUMs / win / float64(sum.UpAtWindow))
			srv.RSSKBPerCall = round3(float64(srv.RSSKBEnd-srv.RSSKBIdle) / float64(sum.UpAtWindow))
		}
		sum.Server = srv
	}

	// Hang up every call (each DELETEs its Location) and wait for them.
	logs.freeze()
	hangUp()
	for i := 0; i < *n; i++ {
		<-finished[i]
	}

	milestones := map[string]func(r *Result) *float64{
		"offer_ready":       func(r *Result) *float64 { return r.OfferReadyMs },
		"http_answer":       func(r *Result) *float64 { return r.HTTPAnswerMs },
		"ice_connected":     func(r *Result) *float64 { return r.ICEConnectedMs },
		"dtls_connected":    func(r *Result) *float64 { return r.DTLSConnectedMs },
		"pc_connected":      func(r *Result) *float64 { return r.PCConnectedMs },
		"datachannel_open":  func(r *Result) *float64 { return r.DataChannelOpenMs },
		"first_inbound_rtp": func(r *Result) *float64 { return r.FirstInboundRTPMs },
		"first_dc_message":  func(r *Result) *float64 { return r.FirstDCMessageMs },
	}
	values := map[string][]float64{}
	var jitters, earlyAt []float64
	for i := range results {
		r := &results[i]
		if r.Error != "not started" {
			sum.Started++
		}
		if r.OK {
			sum.OKCalls++
		} else {
			sum.Failed++
			sum.Errors[r.Error]++
		}
		if r.Ended.Early {
			sum.EndedEarly++
			earlyAt = append(earlyAt, r.Ended.AtMs)
		}
		if r.Ended.Reason != "" {
			sum.EndReasons[r.Ended.Reason]++
		}
		for name, get := range milestones {
			if v := get(r); v != nil {
				values[name] = append(values[name], *v)
			}
		}
		if r.InPackets > 0 {
			jitters = append(jitters, r.JitterMs)
		}
		sum.InLostTotal += r.InLost
		if r.DataChannelOpenMs != nil {
			sum.DCOpen++
		}
		if r.DCRecv > 0 {
			sum.DCWithMessage++
		}
		sum.DeleteStatus[strconv.Itoa(r.DeleteStatus)]++
		if r.SendLateMaxMs > sum.Client.SendLateMaxMs {
			sum.Client.SendLateMaxMs = r.SendLateMaxMs
		}
	}
	for name := range milestones {
		sum.Setup[name] = mkDist(values[name])
	}
	sum.EndedEarlyAt = mkDist(earlyAt)
	if len(jitters) > 0 {
		sort.Float64s(jitters)
		t := 0.0
		for _, v := range jitters {
			t += v
		}
		sum.JitterMsMean, sum.JitterMsMax = round3(t/float64(len(jitters))), jitters[len(jitters)-1]
	}
	sum.PionProblems = logs.problems()
	if *perCall {
		sum.Calls = results
	}
	sum.OK = sum.OKCalls == *n
	printJSON(sum)
	if !sum.OK {
		return 1
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
