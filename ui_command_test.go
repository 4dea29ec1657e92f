package postscale

import (
	"strings"
	"testing"
)

// TestUIProxyRefusesSockets: an admin endpoint on a socket is for its
// file's users only; the page's local server would open it to everyone.
func TestUIProxyRefusesSockets(t *testing.T) {
	for _, admin := range []string{"unix//run/caddy-admin.sock", "unix//run/caddy-admin.sock|0600"} {
		if _, err := newUIProxy(admin, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "socket") {
			t.Errorf("newUIProxy(%q): err %v, want a refusal naming the socket", admin, err)
		}
	}
	if _, err := newUIProxy("localhost:2019", "127.0.0.1:1"); err != nil {
		t.Errorf("newUIProxy(localhost:2019): %v", err)
	}
}
