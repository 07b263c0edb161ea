package main

import (
	"fmt"
	"regexp"
	"sort"
	"sync"

	"github.com/pion/logging"
)

// logSink is a Pion LoggerFactory that logs to stderr as Pion does (PION_LOG_*
// variables apply) and also keeps Pion's warnings and errors, so that a
// result can say, for example, that inbound RTP was dropped as unhandled.
type logSink struct {
	inner  *logging.DefaultLoggerFactory
	mu     sync.Mutex
	seen   map[string]int // "scope level: message" with numbers masked -> count
	first  map[string]string
	frozen bool // we hang up: what Pion logs while tearing down is ours
}

// freeze stops keeping messages (they still go to stderr).
func (s *logSink) freeze() {
	s.mu.Lock()
	s.frozen = true
	s.mu.Unlock()
}

func newLogSink() *logSink {
	return &logSink{inner: logging.NewDefaultLoggerFactory(), seen: map[string]int{}, first: map[string]string{}}
}

// NewLogger implements logging.LoggerFactory.
func (s *logSink) NewLogger(scope string) logging.LeveledLogger {
	return &sinkLogger{LeveledLogger: s.inner.NewLogger(scope), sink: s, scope: scope}
}

var digits = regexp.MustCompile(`[0-9]+`)

func (s *logSink) add(scope, level, msg string) {
	key := scope + " " + level + ": " + digits.ReplaceAllString(msg, "N")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.frozen {
		return
	}
	if _, ok := s.first[key]; !ok && len(s.first) < 50 {
		s.first[key] = scope + " " + level + ": " + msg
	}
	s.seen[key]++
}

// loggedProblem is one distinct warning or error Pion logged, with its count.
type loggedProblem struct {
	Message string `json:"message"`
	Count   int    `json:"count"`
}

// problems lists the distinct warnings and errors logged so far, most frequent first.
func (s *logSink) problems() []loggedProblem {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]loggedProblem, 0, len(s.first))
	for key, msg := range s.first {
		out = append(out, loggedProblem{Message: msg, Count: s.seen[key]})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Message < out[j].Message
	})
	return out
}

type sinkLogger struct {
	logging.LeveledLogger
	sink  *logSink
	scope string
}

func (l *sinkLogger) Warn(msg string) { l.sink.add(l.scope, "warning", msg); l.LeveledLogger.Warn(msg) }
func (l *sinkLogger) Warnf(format string, args ...interface{}) {
	l.Warn(fmt.Sprintf(format, args...))
}
func (l *sinkLogger) Error(msg string) { l.sink.add(l.scope, "error", msg); l.LeveledLogger.Error(msg) }
func (l *sinkLogger) Errorf(format string, args ...interface{}) {
	l.Error(fmt.Sprintf(format, args...))
}
