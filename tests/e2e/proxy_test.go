//go:build unix

package e2e

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// netState is what a faultProxy does with the bytes of its connections.
type netState int

const (
	netPass      netState = iota // bytes go through (after the latency, if any)
	netBlackhole                 // no byte goes through either way; connections stay open
	netReset                     // every connection is reset (RST), new ones as they come
)

func (s netState) String() string {
	switch s {
	case netBlackhole:
		return "blackhole"
	case netReset:
		return "reset"
	}
	return "pass"
}

// faultProxy is a TCP proxy between worker processes and Redis that plays
// the faults of a network on every connection through it:
//
//   - blackhole: no byte goes through, either way. Connections stay open;
//     what is sent meanwhile is held, as TCP would retransmit it, and goes
//     through once healed (a command the client gave up on may still run
//     in Redis then, as over a real network). New connections are accepted
//     and held the same way.
//   - reset: every connection is reset (RST to both ends), and every new
//     one as soon as it is accepted, until healed.
//   - latency: every chunk of bytes, either way, is held back that long
//     (order kept).
//
// It serves the test binary's loopback; the workers get its URL.
type faultProxy struct {
	t        *testing.T
	ln       net.Listener
	upstream string

	mu      sync.Mutex
	state   netState
	latency time.Duration
	changed chan struct{} // closed and replaced on every change of state
	conns   map[*proxyConn]struct{}
	closed  bool

	wg       sync.WaitGroup
	accepted atomic.Int64 // connections accepted
	resets   atomic.Int64 // connections reset
}

// proxyConn is one client connection and its upstream connection.
type proxyConn struct {
	client, server *net.TCPConn
	done           chan struct{} // closed once both are closed
	once           sync.Once
}

// newProxy starts a proxy to upstream (host:port), closed when the test
// ends.
func newProxy(t *testing.T, upstream string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, ln: ln, upstream: upstream, changed: make(chan struct{}), conns: make(map[*proxyConn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URL is the Redis URL of the proxy.
func (p *faultProxy) URL() string { return "redis://" + p.ln.Addr().String() + "/0" }

// set changes the proxy's state; reset resets every open connection now.
func (p *faultProxy) set(s netState) {
	p.mu.Lock()
	p.state = s
	close(p.changed)
	p.changed = make(chan struct{})
	var conns []*proxyConn
	if s == netReset {
		for c := range p.conns {
			conns = append(conns, c)
		}
	}
	p.mu.Unlock()
	for _, c := range conns {
		p.resets.Add(1)
		c.reset()
	}
}

// setLatency holds back every chunk of bytes sent from now on by d.
func (p *faultProxy) setLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// heal lets bytes through again, with no added latency.
func (p *faultProxy) heal() {
	p.setLatency(0)
	p.set(netPass)
}

func (p *faultProxy) current() (netState, time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.latency, p.changed
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.accepted.Add(1)
		client := c.(*net.TCPConn)
		if st, _, _ := p.current(); st == netReset {
			p.resets.Add(1)
			_ = client.SetLinger(0)
			_ = client.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
		if err != nil {
			// Redis is down: so is this connection.
			_ = client.SetLinger(0)
			_ = client.Close()
			continue
		}
		pc := &proxyConn{client: client, server: s.(*net.TCPConn), done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pc.reset()
			continue
		}
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		var pipes sync.WaitGroup
		pipes.Add(2)
		p.wg.Add(3)
		go func() { defer p.wg.Done(); defer pipes.Done(); p.pipe(pc, pc.client, pc.server) }()
		go func() { defer p.wg.Done(); defer pipes.Done(); p.pipe(pc, pc.server, pc.client) }()
		go func() {
			defer p.wg.Done()
			pipes.Wait()
			pc.close()
			p.mu.Lock()
			delete(p.conns, pc)
			p.mu.Unlock()
		}()
	}
}

// chunk is bytes read from one end, due at the other end at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies from src to dst, through the proxy's faults, until src ends
// (then what was read is delivered, and both ends are closed) or dst fails.
func (p *faultProxy) pipe(pc *proxyConn, src, dst *net.TCPConn) {
	queue := make(chan chunk, 256)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(queue)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				_, lat, _ := p.current()
				select {
				case queue <- chunk{b: buf[:n], due: time.Now().Add(lat)}:
				case <-pc.done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	defer pc.close()
	for c := range queue {
		if d := time.Until(c.due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-pc.done:
				t.Stop()
				return
			}
		}
		for {
			st, _, changed := p.current()
			if st == netPass {
				break
			}
			select {
			case <-changed:
			case <-pc.done:
				return
			}
		}
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}

// reset closes both ends with RST.
func (pc *proxyConn) reset() {
	pc.once.Do(func() {
		_ = pc.client.SetLinger(0)
		_ = pc.server.SetLinger(0)
		_ = pc.client.Close()
		_ = pc.server.Close()
		close(pc.done)
	})
}

// close closes both ends.
func (pc *proxyConn) close() {
	pc.once.Do(func() {
		_ = pc.client.Close()
		_ = pc.server.Close()
		close(pc.done)
	})
}

func (p *faultProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		c.reset()
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.t.Errorf("proxy to %s: connections did not close", p.upstream)
	}
}

// TestProxyPlaysItsFaults checks the proxy itself against Redis: bytes go
// through, are held by a blackhole and delivered once healed, are delayed
// by the latency, and connections are reset.
func TestProxyPlaysItsFaults(t *testing.T) {
	e := newEnv(t)
	p := newProxy(t, e.info.Addr)
	c, err := net.Dial("tcp", p.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping := func(deadline time.Duration) (string, error) {
		_ = c.SetDeadline(time.Now().Add(deadline))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return "", err
		}
		b := make([]byte, 7)
		_, err := io.ReadFull(c, b)
		return string(b), err
	}
	if got, err := ping(5 * time.Second); err != nil || got != "+PONG\r\n" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	p.set(netBlackhole)
	var ne net.Error
	if got, err := ping(200 * time.Millisecond); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("through a blackhole: %q, %v; want a timeout", got, err)
	}
	p.heal()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 7)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "+PONG\r\n" {
		t.Fatalf("the PING held by the blackhole, once healed: %q, %v", b, err)
	}
	p.setLatency(150 * time.Millisecond)
	start := time.Now()
	if got, err := ping(5 * time.Second); err != nil || got != "+PONG\r\n" {
		t.Fatalf("with latency: %q, %v", got, err)
	}
	if rtt := time.Since(start); rtt < 300*time.Millisecond {
		t.Fatalf("a round trip with 150ms latency each way took %v", rtt)
	}
	p.set(netReset)
	if _, err := ping(5 * time.Second); err == nil {
		t.Fatal("a reset connection still answered")
	}
	c2, err := net.Dial("tcp", p.ln.Addr().String())
	if err == nil {
		_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c2.Write([]byte("PING\r\n"))
		_, err = c2.Read(make([]byte, 7))
		c2.Close()
	}
	if err == nil {
		t.Fatal("a connection opened during the reset was not reset")
	}
	if p.resets.Load() < 2 {
		t.Fatalf("%d connections reset, want 2", p.resets.Load())
	}
}
