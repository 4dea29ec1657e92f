package postscale

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigPlans: the CLI straight on a store reads the plans from the
// gateway's config: every postscale handler's, wherever it sits, with the
// defaults and enterprise; a config without a postscale handler tells
// nothing.
func TestConfigPlans(t *testing.T) {
	cfg := `{"apps":{"http":{"servers":{
		"a":{"routes":[{"handle":[{"handler":"postscale","plans":{"pro":{"rate":5}}},{"handler":"reverse_proxy"}]}]},
		"b":{"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"postscale","plans":{"max":{"rate":9,"burst":9}}}]}]}]}],
		     "errors":{"routes":[{"handle":[{"handler":"postscale"}]}]}}}}}}`
	plans, err := configPlans([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(plans, ","), "enterprise,growth,max,pro,scale,starter"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	plans, err = configPlans([]byte(`{"apps":{"http":{"servers":{"a":{"routes":[{"handle":[{"handler":"file_server"}]}]}}}}}`))
	if err != nil || plans != nil {
		t.Errorf("a config without postscale: got %v, %v; want nil", plans, err)
	}
	if _, err := configPlans([]byte(`{`)); err == nil {
		t.Error("broken JSON accepted")
	}
}

func TestIsPostgresDSN(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"postgres://gateway@db.internal:5432/keys", true},
		{"postgresql://db.internal/keys?sslmode=verify-full", true},
		{"host=127.0.0.1 user=postgres password=s3cret dbname=test", true},
		{" dbname = test", true},
		{"/var/lib/postscale/keys.db", false},
		{"keys.db", false},
		{"./data/keys=old.db", false},
		{"", false},
	} {
		if got := isPostgresDSN(tc.name); got != tc.want {
			t.Errorf("isPostgresDSN(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestProbeAdmin: the CLI falls back to a store only when nothing listens
// at the admin address: a refused connection, or a unix socket that does
// not exist. A timeout or a host that does not resolve is an error that
// names the address and --store.
func TestProbeAdmin(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listening := ln.Addr().String()
	ln.Close() // now refused
	if why, err := probeAdmin(listening); why != "connection refused" || err != nil {
		t.Errorf("closed port: got %q, %v; want connection refused", why, err)
	}
	sock := filepath.Join(t.TempDir(), "admin.sock")
	if why, err := probeAdmin("unix/" + sock + "|0220"); why != "no socket at "+sock || err != nil {
		t.Errorf("missing unix socket: got %q, %v; want no socket at %s", why, err, sock)
	}
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if why, err := probeAdmin(ln.Addr().String()); why != "" || err != nil {
		t.Errorf("listening port: got %q, %v; want it found running", why, err)
	}

	defer func(d func(string, string, time.Duration) (net.Conn, error)) { dialAdmin = d }(dialAdmin)
	for name, dialErr := range map[string]error{
		"timeout": &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded},
		"dns":     &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "locahost", IsNotFound: true}},
	} {
		dialAdmin = func(string, string, time.Duration) (net.Conn, error) { return nil, dialErr }
		why, err := probeAdmin("locahost:2019")
		if why != "" || err == nil || !strings.Contains(err.Error(), "locahost:2019") || !strings.Contains(err.Error(), "--store") {
			t.Errorf("%s: got %q, %v; want an error naming the address and --store, and no fallback", name, why, err)
		}
	}
}

// TestConfigStores: the CLI finds the store a config's postscale handlers
// use, as they open it: a SQLite path made absolute, the default one for
// a handler without a store, a PostgreSQL DSN with its placeholders
// replaced (shown without its password); each store once.
func TestConfigStores(t *testing.T) {
	t.Setenv("POSTSCALE_TEST_CONFIG_DSN", "postgres://gw:s3cret@db.internal:5432/keys")
	cfg := `{"apps":{"http":{"servers":{
		"a":{"routes":[{"handle":[{"handler":"postscale","store":{"backend":"sqlite","path":"rel/keys.db"}}]}]},
		"b":{"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"postscale","store":{"backend":"sqlite","path":"rel/keys.db"}}]}]}]}]},
		"c":{"routes":[{"handle":[{"handler":"postscale"}]}]},
		"d":{"routes":[{"handle":[{"handler":"postscale","store":{"backend":"postgres","dsn":"{env.POSTSCALE_TEST_CONFIG_DSN}"}}]}]}}}}}`
	stores, err := configStores([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("rel/keys.db")
	got := map[string]string{}
	for _, st := range stores {
		got[st.name] = st.shown
	}
	want := map[string]string{
		abs:                 abs,
		DefaultSQLitePath(): DefaultSQLitePath(),
		"postgres://gw:s3cret@db.internal:5432/keys": "postgres://gw@db.internal:5432/keys",
	}
	if len(stores) != len(want) {
		t.Errorf("got %d stores %v, want %d", len(stores), got, len(want))
	}
	for name, shown := range want {
		if got[name] != shown {
			t.Errorf("store %q: shown as %q, want %q (all: %v)", name, got[name], shown, got)
		}
	}
	if _, err := configStores([]byte(`{"apps":{"http":{"servers":{"a":{"routes":[{"handle":[{"handler":"postscale","store":{"backend":"etcd"}}]}]}}}}}`)); err == nil || !strings.Contains(err.Error(), "etcd") {
		t.Errorf("a store the CLI cannot open: got %v, want an error naming its backend", err)
	}
}
