package postscale

import (
	"fmt"
	"os"
	"testing"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// TestMain keeps what the tests write in a temporary directory of the
// run's own (Caddy's autosave and data directories included; see
// testenv.IsolateCaddyDirs), and drops the Redis client's log lines about
// the outages the tests cause on purpose.
func TestMain(m *testing.M) {
	dir, err := testenv.IsolateCaddyDirs()
	if err != nil {
		fmt.Fprintln(os.Stderr, "making the tests' Caddy directories:", err)
		os.Exit(2)
	}
	testenv.QuietRedis()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
