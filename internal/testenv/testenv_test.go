package testenv

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends a line through addr and reports whether it came back
// within d.
func roundTrip(addr string, d time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}

func TestProxyModes(t *testing.T) {
	p := NewProxy(t, echoServer(t))
	if err := roundTrip(p.Addr(), time.Second); err != nil {
		t.Fatalf("passing: %v, want an answer", err)
	}
	p.Refuse()
	if err := roundTrip(p.Addr(), time.Second); err == nil {
		t.Fatalf("refusing: got an answer, want an error")
	}
	p.Swallow()
	start := time.Now()
	err := roundTrip(p.Addr(), 200*time.Millisecond)
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("swallowing: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("swallowing: failed after %v, want it to hang until the deadline", d)
	}
	p.Pass()
	if err := roundTrip(p.Addr(), time.Second); err != nil {
		t.Fatalf("passing again: %v, want an answer", err)
	}
}
