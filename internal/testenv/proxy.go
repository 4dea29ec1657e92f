package testenv

import (
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of a server, for injecting faults: it
// passes traffic through, refuses connections, or swallows traffic
// without ever answering (a hung server). Switching back to Pass closes
// the connections that were refused or swallowed, so clients reconnect
// to a clean stream.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  proxyMode
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

type proxyMode int

const (
	pass proxyMode = iota
	refuse
	swallow
)

// NewProxy listens on a loopback port and forwards to target (host:port)
// until the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Pass forwards traffic (the initial mode).
func (p *Proxy) Pass() { p.set(pass) }

// Refuse resets every open connection and every new one at once: the
// server looks down.
func (p *Proxy) Refuse() { p.set(refuse) }

// Swallow keeps connections open and accepts new ones, but nothing goes
// through in either direction: the server looks hung.
func (p *Proxy) Swallow() { p.set(swallow) }

func (p *Proxy) set(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == m {
		return
	}
	p.mode = m
	if m == swallow {
		return
	}
	// Refused, or back to passing after a fault: the open streams lost
	// bytes or are meant to die, so close them.
	for c := range p.conns {
		resetConn(c)
		delete(p.conns, c)
	}
}

func (p *Proxy) currentMode() proxyMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	p.wg.Wait()
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST, as a refused or reset connection
	}
	c.Close()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == refuse {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(client) {
			resetConn(client)
			continue
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	var server net.Conn
	if p.currentMode() == pass {
		var err error
		if server, err = net.Dial("tcp", p.target); err != nil {
			resetConn(client)
			return
		}
		p.track(server)
	}
	if server == nil { // swallowed from the start: read and drop until closed
		p.pump(nil, client)
		client.Close()
		return
	}
	done := make(chan struct{}, 2)
	go func() { p.pump(server, client); done <- struct{}{} }()
	go func() { p.pump(client, server); done <- struct{}{} }()
	<-done // one side ended: end both
	client.Close()
	server.Close()
	<-done
}

// pump copies src to dst while the proxy passes traffic, and drops what
// it reads while it swallows (dst nil: always drop).
func (p *Proxy) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && dst != nil && p.currentMode() == pass {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: the stream is over
		}
	}
}
