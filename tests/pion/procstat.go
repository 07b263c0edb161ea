package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// clkTck is USER_HZ, 100 on every Linux architecture Go supports.
const clkTck = 100

// procStat reads utime+stime (ms) and the parent PID of pid; 0 means this process.
func procStat(pid int) (cpuMs float64, ppid int, err error) {
	p := "self"
	if pid > 0 {
		p = strconv.Itoa(pid)
	}
	b, err := os.ReadFile("/proc/" + p + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bad /proc/%s/stat", p)
	}
	// After the command: state(3) ppid(4) ... utime(14) stime(15).
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("short /proc/%s/stat", p)
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bad utime or stime in /proc/%s/stat", p)
	}
	return (ut + st) * 1000 / clkTck, ppid, nil
}

// procStatusKB reads a "kB" line (VmRSS, VmHWM) or a count (Threads) of /proc/PID/status.
func procStatusKB(pid int, field string) int64 {
	p := "self"
	if pid > 0 {
		p = strconv.Itoa(pid)
	}
	f, err := os.Open("/proc/" + p + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, field+":") {
			if fs := strings.Fields(line[len(field)+1:]); len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// withDescendants adds every live descendant of pids (worker processes).
func withDescendants(pids []int) []int {
	children := map[int][]int{}
	entries, _ := filepath.Glob("/proc/[0-9]*")
	for _, e := range entries {
		pid, err := strconv.Atoi(filepath.Base(e))
		if err != nil {
			continue
		}
		if _, ppid, err := procStat(pid); err == nil {
			children[ppid] = append(children[ppid], pid)
		}
	}
	seen := map[int]bool{}
	var out []int
	var walk func(int)
	walk = func(p int) {
		if seen[p] {
			return
		}
		seen[p] = true
		out = append(out, p)
		for _, c := range children[p] {
			walk(c)
		}
	}
	for _, p := range pids {
		walk(p)
	}
	sort.Ints(out)
	return out
}

// serverSnapshot is the summed CPU, RSS and threads of the server's processes at one moment.
type serverSnapshot struct {
	pids    []int
	cpuMs   map[int]float64
	rssKB   int64
	threads int64
}

func snapshotServer(pids []int, children bool) serverSnapshot {
	if children {
		pids = withDescendants(pids)
	}
	s := serverSnapshot{cpuMs: map[int]float64{}}
	for _, p := range pids {
		cpu, _, err := procStat(p)
		if err != nil {
			continue // gone
		}
		s.pids = append(s.pids, p)
		s.cpuMs[p] = cpu
		s.rssKB += procStatusKB(p, "VmRSS")
		s.threads += procStatusKB(p, "Threads")
	}
	return s
}

// cpuSince is the CPU the processes alive in both snapshots spent between them.
func (s serverSnapshot) cpuSince(before serverSnapshot) float64 {
	var ms float64
	for p, v := range s.cpuMs {
		if b, ok := before.cpuMs[p]; ok {
			ms += v - b
		}
	}
	return ms
}

// loadAvg is the machine's one-minute load average (0 when unknown).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
