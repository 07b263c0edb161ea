package main

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// rebindableConn is the client's one UDP socket, which can be swapped for a
// new one on another local port in the middle of a call: what a NAT
// rebinding looks like from the server. Pion keeps its candidate and its
// selected pair (LocalAddr stays the first address, as a client behind a
// NAT does not see its public port change); the server sees datagrams come
// from a new source port. Pion reaches this socket through its ICE UDP mux.
type rebindableConn struct {
	mu     sync.Mutex
	cur    *net.UDPConn
	first  net.Addr
	ip     net.IP
	closed bool
	// What went through the current socket since the last rebind.
	sent, received, sentSTUN, receivedSTUN atomic.Int64
}

// isSTUN tells STUN from DTLS and SRTP by the first byte (RFC 7983).
func isSTUN(b []byte) bool { return len(b) > 0 && b[0] < 4 }

func listenRebindable(ip net.IP) (*rebindableConn, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, err
	}
	return &rebindableConn{cur: c, first: c.LocalAddr(), ip: ip}, nil
}

func (r *rebindableConn) current() *net.UDPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// rebind moves to a fresh socket on a new port; returns the old and new ports.
func (r *rebindableConn) rebind() (int, int, error) {
	next, err := net.ListenUDP("udp4", &net.UDPAddr{IP: r.ip})
	if err != nil {
		return 0, 0, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		next.Close()
		return 0, 0, net.ErrClosed
	}
	old := r.cur
	r.cur = next
	r.sent.Store(0)
	r.received.Store(0)
	r.sentSTUN.Store(0)
	r.receivedSTUN.Store(0)
	r.mu.Unlock()
	oldPort := old.LocalAddr().(*net.UDPAddr).Port
	// Closing the old socket wakes the mux's reader, which moves to the new one.
	old.Close()
	return oldPort, next.LocalAddr().(*net.UDPAddr).Port, nil
}

// ReadFrom reads from the current socket, following a rebind.
func (r *rebindableConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c := r.current()
		n, addr, err := c.ReadFrom(b)
		if err != nil && errors.Is(err, net.ErrClosed) {
			r.mu.Lock()
			moved := r.cur != c && !r.closed
			r.mu.Unlock()
			if moved {
				continue
			}
		}
		if err == nil {
			r.received.Add(1)
			if isSTUN(b[:n]) {
				r.receivedSTUN.Add(1)
			}
		}
		return n, addr, err
	}
}

func (r *rebindableConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := r.current().WriteTo(b, addr)
	if err == nil {
		r.sent.Add(1)
		if isSTUN(b) {
			r.sentSTUN.Add(1)
		}
	}
	return n, err
}

func (r *rebindableConn) Close() error {
	r.mu.Lock()
	r.closed = true
	c := r.cur
	r.mu.Unlock()
	return c.Close()
}

// LocalAddr is the first address: the one in the client's candidate.
func (r *rebindableConn) LocalAddr() net.Addr { return r.first }

func (r *rebindableConn) SetDeadline(t time.Time) error      { return r.current().SetDeadline(t) }
func (r *rebindableConn) SetReadDeadline(t time.Time) error  { return r.current().SetReadDeadline(t) }
func (r *rebindableConn) SetWriteDeadline(t time.Time) error { return r.current().SetWriteDeadline(t) }
